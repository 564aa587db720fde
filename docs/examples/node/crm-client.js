#!/usr/bin/env node
// A minimal CRM client for xbridge, in Node.js (20 or later) with amqplib.
//
// It does the CRM's half of the contract (docs/integrator.md, "Message contract"):
// - consumes the incoming queue (xbridge.incoming) with manual acks, acking
//   each event only after it was handled;
// - drops repeats by the AMQP message_id: delivery is at least once, and a
//   repeat carries the same message_id;
// - answers each customer DM (message.received) with a reply, published to
//   the outgoing exchange with the channel's name as routing key;
// - follows what became of its replies (message.sent, message.failed);
// - tells the agents when a channel stops sending (channel.state).
//
// Usage:
//   npm ci                                      # installs amqplib from package-lock.json
//   node crm-client.js                          # run until Ctrl-C
//   node crm-client.js --reply-to 2244994945 --once   # send one reply, wait for its outcome
//
// Settings come from the environment; the defaults are the bridge's defaults:
//   AMQP_URL                   amqp://guest:guest@127.0.0.1:5672/%2f
//   XBRIDGE_OUTGOING_EXCHANGE  xbridge.outgoing
//   XBRIDGE_INCOMING_QUEUE     xbridge.incoming
//   XBRIDGE_CHANNEL            demo   (the channel --reply-to sends from)
//
// It prints one line per thing that happens, `<what> key=value ...`, so a
// script (and this project's CI) can follow it.

'use strict';

const { randomUUID } = require('node:crypto');
const { parseArgs } = require('node:util');
const amqp = require('amqplib');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const OUTGOING_EXCHANGE = process.env.XBRIDGE_OUTGOING_EXCHANGE || 'xbridge.outgoing';
const INCOMING_QUEUE = process.env.XBRIDGE_INCOMING_QUEUE || 'xbridge.incoming';
const CHANNEL = process.env.XBRIDGE_CHANNEL || 'demo';

// What each channel state means for the agents (docs/operator.md, "Channel states").
const STATE_NOTES = {
  ok: 'replies go out again',
  rate_limited: "replies held until X's rate-limit window resets",
  credits_exhausted: "replies held: top up the X account's credits or raise its spend cap",
  unauthorized: "replies failing: X refuses the channel's credentials",
  missing_permission: 'replies failing: the access token may not send DMs',
  webhook_invalid: 'customer DMs not arriving: X marked the webhook invalid',
  polling_paused: 'customer DMs may be late: polling X keeps failing',
};

/** One output line, `<what> key=value ...`; a value with spaces or quotes is a JSON string. */
function say(what, fields = {}) {
  const show = (value) => {
    const text = String(value ?? '');
    return text === '' || /[\s"=]/.test(text) ? JSON.stringify(text) : text;
  };
  console.log([what, ...Object.entries(fields).map(([k, v]) => `${k}=${show(v)}`)].join(' '));
}

/**
 * The message_ids handled lately, to drop repeats. Bounded, and lost at exit:
 * enough for an example. A real CRM keeps them in its database, written in
 * the same transaction as the event's effect (the stored DM, the reply's
 * status), so a repeat is recognised after a restart too.
 */
class SeenIds {
  constructor(limit = 10_000) {
    this.ids = new Set(); // a Set iterates in insertion order: oldest first
    this.limit = limit;
  }
  has(id) {
    return this.ids.has(id);
  }
  add(id) {
    this.ids.add(id);
    if (this.ids.size > this.limit) this.ids.delete(this.ids.values().next().value);
  }
}

class CrmClient {
  constructor(connection, once) {
    this.connection = connection;
    this.once = once;
    this.seen = new SeenIds();
    this.pending = new Set(); // replies published by us whose outcome has not come yet
    this.publishedAny = false;
    this.failedAny = false;
    this.returned = new Set(); // replies RabbitMQ could route nowhere
  }

  async open() {
    // A confirm channel for publishing: RabbitMQ acks each reply once it has it.
    this.publisher = await this.connection.createConfirmChannel();
    // With `mandatory`, a reply that no queue takes comes back before the ack.
    // (The bridge's outgoing exchange sends a routing key that names no
    // channel to its unrouted queue instead, and the CRM gets a
    // message.failed with reason unknown_channel.)
    this.publisher.on('return', (msg) => this.returned.add(msg.properties.messageId));
    this.consumer = await this.connection.createChannel();
    // A channel error (e.g. NOT_FOUND for the queue) also rejects the call
    // that caused it, which stops the example with its message.
    for (const ch of [this.publisher, this.consumer]) ch.on('error', () => {});
    await this.consumer.prefetch(10);
  }

  /**
   * Publishes a reply (docs/schemas/outgoing-reply.json) to `channel` and waits
   * for RabbitMQ's confirm. `messageId` is the idempotency key: the bridge sends
   * a reply with the same channel and message_id at most once, so publishing it
   * again after a crash is safe.
   */
  async publishReply(channel, messageId, text, recipientId) {
    const reply = { message_id: messageId, recipient_id: recipientId, text };
    await new Promise((resolve, reject) => {
      this.publisher.publish(OUTGOING_EXCHANGE, channel, Buffer.from(JSON.stringify(reply)), {
        contentType: 'application/json',
        persistent: true,
        messageId,
        // Seconds since 1970: the bridge counts the wait for credits from it.
        timestamp: Math.floor(Date.now() / 1000),
        mandatory: true,
      }, (err) => (err ? reject(new Error(`RabbitMQ refused reply ${messageId}`)) : resolve()));
    });
    if (this.returned.delete(messageId)) {
      throw new Error(`reply ${messageId} was routed nowhere: is ${channel} a bridge channel?`);
    }
    this.pending.add(messageId);
    this.publishedAny = true;
    say('published', { message_id: messageId, channel, recipient_id: recipientId });
  }

  /** Consumes the incoming queue; resolves when --once is satisfied. */
  consume() {
    return new Promise((resolve, reject) => {
      // amqplib calls us for each delivery without waiting for the last one to
      // be handled; chaining keeps them one at a time, in queue order, so a
      // repeat is seen after the first copy was recorded.
      let chain = Promise.resolve();
      this.consumer.consume(INCOMING_QUEUE, (msg) => {
        if (msg === null) return reject(new Error('the broker cancelled the consumer'));
        chain = chain.then(() => this.onDelivery(msg)).then(() => {
          if (this.once && this.publishedAny && this.pending.size === 0) resolve();
        }).catch(reject);
      }, { noAck: false }).then(() => say('consuming', { queue: INCOMING_QUEUE }), reject);
    });
  }

  /**
   * Handles one event, then acks it. If handling throws, the event stays
   * unacked: the process stops, and RabbitMQ delivers it again to the next
   * consumer.
   */
  async onDelivery(msg) {
    const messageId = msg.properties.messageId;
    if (messageId && this.seen.has(messageId)) {
      say('duplicate', { message_id: messageId, action: 'skipped' });
    } else {
      await this.handle(JSON.parse(msg.content.toString('utf8')), messageId);
      if (messageId) this.seen.add(messageId);
    }
    this.consumer.ack(msg);
  }

  async handle(event, messageId) {
    switch (event.type) {
      case 'message.received': {
        say('message.received', {
          message_id: messageId, channel: event.channel, event_id: event.event_id,
          sender: event.sender.id, text: event.text,
        });
        // A real CRM stores the DM and shows it to an agent. Here we answer at
        // once. Deriving the reply's id from the DM's id makes the reply
        // idempotent: if we crash before the ack, the DM comes again, and the
        // bridge drops the second copy of the reply.
        await this.publishReply(event.channel, `auto-${event.event_id}`,
          'Thanks for your message! An agent will answer shortly.', event.sender.id);
        break;
      }
      case 'message.sent':
        this.pending.delete(event.message_id);
        say('message.sent', {
          message_id: event.message_id, channel: event.channel, dm_event_id: event.dm_event_id,
        });
        break;
      case 'message.failed':
        // The reply was dead-lettered: show the agent `detail` and let them act
        // on `reason` (docs/integrator.md, "Reasons").
        this.pending.delete(event.message_id);
        this.failedAny = true;
        say('message.failed', {
          message_id: event.message_id, channel: event.channel,
          reason: event.reason, detail: event.detail,
        });
        break;
      case 'channel.state':
        // Show it on the channel in the CRM; clear the warning on `ok`. A repeat
        // of the last state is possible (at each bridge connect).
        say('channel.state', {
          channel: event.channel, state: event.state,
          note: STATE_NOTES[event.state] ?? 'unknown state',
          ...(event.detail === undefined ? {} : { detail: event.detail }),
        });
        break;
      default:
        // message.echo, conversation.typing, message.read: not used here.
        say('ignored', { message_id: messageId, type: event.type });
    }
  }
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      'reply-to': { type: 'string' }, // publish one reply to this X user id on CHANNEL at start
      once: { type: 'boolean', default: false }, // exit when each reply published is sent or failed
      timeout: { type: 'string' }, // give up after this many seconds (exit status 2)
    },
  });
  const connection = await amqp.connect(AMQP_URL);
  // This example stops when the connection is lost; events it had not acked
  // go back to the queue. A real CRM reconnects with backoff (amqplib's
  // `recovery` option) and consumes again.
  let closing = false;
  connection.on('error', (err) => console.error(`error: ${err.message}`));
  connection.on('close', () => {
    if (!closing) {
      console.error('error: the connection to RabbitMQ closed');
      process.exit(1);
    }
  });
  const client = new CrmClient(connection, args.once);
  await client.open();
  let timer;
  const timedOut = new Promise((resolve) => {
    if (args.timeout) timer = setTimeout(resolve, Number(args.timeout) * 1000, 'timeout');
  });
  if (args['reply-to']) {
    await client.publishReply(CHANNEL, `example-${randomUUID()}`,
      'Hello from the example CRM client!', args['reply-to']);
  }
  // The bridge declares the queue; consuming fails with NOT_FOUND until it ran once.
  const outcome = await Promise.race([client.consume(), timedOut]);
  clearTimeout(timer);
  closing = true;
  await connection.close();
  if (outcome === 'timeout') {
    say('timeout', { pending: client.pending.size });
    return 2;
  }
  return client.failedAny ? 1 : 0;
}

main().then((code) => {
  process.exitCode = code;
}, (err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
