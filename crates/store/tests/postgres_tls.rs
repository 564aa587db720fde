//! The PostgreSQL store over TLS, against a PostgreSQL server of the test's
//! own: the shared server on 5432 has no certificate, and its configuration is
//! not the test's to change.
//!
//! Each test starts a private server (Debian's binaries in
//! `/usr/lib/postgresql/<version>/bin`, or the `PATH`'s) in a temporary
//! directory, on a free port, with `ssl = on` and a server certificate for
//! `localhost` signed by a CA the test makes with the `openssl` command (there
//! wherever Debian's postgresql package is: it depends on it through
//! ssl-cert). Its
//! `pg_hba.conf` takes only TLS connections with a password, so a store that
//! connects at all connects over TLS. initdb refuses to run as root: as root,
//! the server runs as the `postgres` user, its directory handed to it. The
//! server is stopped and deleted when the test ends.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use xbridge_store::{contract, PostgresStore, PostgresTls, StoreError};

/// The superuser's password: no error may show it.
const PASSWORD: &str = "tls-S3cret-pw";

/// A PostgreSQL server of the test's own, TLS only; stopped and deleted on
/// drop.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().expect("a directory for the private server");
        let as_postgres = nix_is_root();
        let server = PrivatePostgres {
            port: free_port(),
            bin: postgres_bin(),
            as_postgres,
            dir,
        };
        server.make_certificates();
        std::fs::write(server.path("pwfile"), PASSWORD).unwrap();
        std::fs::create_dir(server.path("sockets")).unwrap();
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path()));
        }
        server.run_pg(
            "initdb",
            &[
                "-D",
                &server.path_str("data"),
                "-U",
                "postgres",
                "--pwfile",
                &server.path_str("pwfile"),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
        );
        // TLS only, with a password: a plain TCP connection is refused.
        std::fs::write(
            server.path("data/pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl all all ::1/128 scram-sha-256\n",
        )
        .unwrap();
        let options = format!(
            "-p {} -k {} -c listen_addresses=localhost -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off",
            server.port,
            server.path_str("sockets"),
            server.path_str("server.crt"),
            server.path_str("server.key"),
        );
        server.run_pg(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                &server.path_str("data"),
                "-l",
                &server.path_str("server.log"),
                "-o",
                &options,
            ],
        );
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The URL of the server's `postgres` database at `host`, with the password.
    fn url(&self, host: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres?connect_timeout=10",
            self.port
        )
    }

    /// The CA the server's certificate is signed by.
    fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Another CA, which signed nothing the server shows.
    fn wrong_ca_file(&self) -> PathBuf {
        self.path("wrong-ca.pem")
    }

    /// Two CAs, and a certificate for `localhost` (a name, no IP address)
    /// signed by the first, with its key readable by the server only.
    fn make_certificates(&self) {
        let dir = self.dir.path();
        std::fs::write(
            dir.join("ca.cnf"),
            "[req]\ndistinguished_name = dn\n[dn]\n\
             [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [server]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost\n\
             authorityKeyIdentifier = keyid\n",
        )
        .unwrap();
        for (name, subject) in [
            ("ca", "/CN=xbridge test CA"),
            ("wrong-ca", "/CN=another CA"),
        ] {
            run(Command::new("openssl").current_dir(dir).args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                subject,
                "-config",
                "ca.cnf",
                "-extensions",
                "ca",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ]));
        }
        run(Command::new("openssl").current_dir(dir).args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-config",
            "ca.cnf",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]));
        run(Command::new("openssl").current_dir(dir).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ca.cnf",
            "-extensions",
            "server",
            "-out",
            "server.crt",
        ]));
        // PostgreSQL refuses a key others can read.
        #[cfg(unix)]
        std::fs::set_permissions(
            dir.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }

    /// Runs the server's program `program` (as `postgres` when the test is root).
    fn run_pg(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(self.dir.path());
        let output = command.output().expect("the PostgreSQL program runs");
        if !output.status.success() {
            let log = std::fs::read_to_string(self.path("server.log")).unwrap_or_default();
            panic!(
                "{command:?} failed: {}{}\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.path_str("data");
        let args = ["stop", "-w", "-m", "immediate", "-D", data.as_str()];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args)
                .output()
        } else {
            Command::new(program).args(args).output()
        };
    }
}

fn nix_is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// Debian's newest PostgreSQL binaries, else the `PATH`'s (`initdb` there).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        let which = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .expect("sh runs");
        let initdb = String::from_utf8_lossy(&which.stdout).trim().to_owned();
        assert!(
            !initdb.is_empty(),
            "no PostgreSQL server binaries (initdb) on this machine"
        );
        Path::new(&initdb).parent().expect("a folder").to_owned()
    })
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn verify_full(ca_file: PathBuf) -> PostgresTls {
    PostgresTls::VerifyFull { ca_file }
}

#[tokio::test]
async fn the_store_keeps_the_contract_over_verify_full() {
    let server = PrivatePostgres::start();
    let store = PostgresStore::connect_with(
        &server.url("localhost"),
        Some("xbridge"),
        &verify_full(server.ca_file()),
    )
    .await
    .expect("connects over TLS, the certificate verified, and migrates");
    contract::run_all(&store).await;
}

#[tokio::test]
async fn a_server_the_ca_or_host_name_does_not_vouch_for_is_refused_without_the_password() {
    let server = PrivatePostgres::start();
    let refused = |result: Result<PostgresStore, StoreError>| {
        let error = result.expect_err("the connection is refused").to_string();
        assert!(!error.contains(PASSWORD), "{error}");
        error
    };

    // A CA that did not sign the server's certificate.
    let error = refused(
        PostgresStore::connect_with(
            &server.url("localhost"),
            None,
            &verify_full(server.wrong_ca_file()),
        )
        .await,
    );
    assert!(error.contains("certificate"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");

    // The right CA, but the certificate names localhost, not 127.0.0.1.
    let error = refused(
        PostgresStore::connect_with(
            &server.url("127.0.0.1"),
            None,
            &verify_full(server.ca_file()),
        )
        .await,
    );
    assert!(error.contains("certificate"), "{error}");
    assert!(
        error.contains("not valid for name \"127.0.0.1\""),
        "{error}"
    );

    // Plain TCP is what the server refuses: the modes above really use TLS.
    let error = refused(
        PostgresStore::connect_with(&server.url("localhost"), None, &PostgresTls::Disable).await,
    );
    assert!(error.contains("no encryption"), "{error}");

    // `require` encrypts without checking the certificate.
    PostgresStore::connect_with(&server.url("127.0.0.1"), None, &PostgresTls::Require)
        .await
        .expect("require connects to any certificate");
}
