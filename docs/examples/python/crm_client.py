#!/usr/bin/env python3
"""A minimal CRM client for xbridge, in Python with pika.

It does the CRM's half of the contract (docs/integrator.md, "Message contract"):

* consumes the incoming queue (``xbridge.incoming``) with manual acks, acking
  each event only after it was handled;
* drops repeats by the AMQP ``message_id``: delivery is at least once, and a
  repeat carries the same ``message_id``;
* answers each customer DM (``message.received``) with a reply, published to
  the outgoing exchange with the channel's name as routing key;
* follows what became of its replies (``message.sent``, ``message.failed``);
* tells the agents when a channel stops sending (``channel.state``).

Usage::

    pip install pika==1.4.4
    python crm_client.py                      # run until Ctrl-C
    python crm_client.py --reply-to 2244994945 --once   # send one reply, wait for its outcome

Settings come from the environment; the defaults are the bridge's defaults::

    AMQP_URL                   amqp://guest:guest@127.0.0.1:5672/%2f
    XBRIDGE_OUTGOING_EXCHANGE  xbridge.outgoing
    XBRIDGE_INCOMING_QUEUE     xbridge.incoming
    XBRIDGE_CHANNEL            demo   (the channel --reply-to sends from)

It prints one line per thing that happens, ``<what> key=value ...``, so a
script (and this project's CI) can follow it.
"""

import argparse
import collections
import json
import os
import sys
import time
import uuid

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
OUTGOING_EXCHANGE = os.environ.get("XBRIDGE_OUTGOING_EXCHANGE", "xbridge.outgoing")
INCOMING_QUEUE = os.environ.get("XBRIDGE_INCOMING_QUEUE", "xbridge.incoming")
CHANNEL = os.environ.get("XBRIDGE_CHANNEL", "demo")

# What each channel state means for the agents (docs/operator.md, "Channel states").
STATE_NOTES = {
    "ok": "replies go out again",
    "rate_limited": "replies held until X's rate-limit window resets",
    "credits_exhausted": "replies held: top up the X account's credits or raise its spend cap",
    "unauthorized": "replies failing: X refuses the channel's credentials",
    "missing_permission": "replies failing: the access token may not send DMs",
    "webhook_invalid": "customer DMs not arriving: X marked the webhook invalid",
    "polling_paused": "customer DMs may be late: polling X keeps failing",
}


def say(what, **fields):
    """One output line, `<what> key=value ...`, flushed at once. A value with
    spaces or quotes is written as a JSON string."""
    def show(value):
        text = str(value)
        return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text
    print(what, *(f"{key}={show(value)}" for key, value in fields.items()), flush=True)


class SeenIds:
    """The `message_id`s handled lately, to drop repeats.

    Bounded, and lost at exit: enough for an example. A real CRM keeps them in
    its database, written in the same transaction as the event's effect (the
    stored DM, the reply's status), so a repeat is recognised after a restart
    too.
    """

    def __init__(self, limit=10_000):
        self.ids = collections.OrderedDict()
        self.limit = limit

    def __contains__(self, message_id):
        return message_id in self.ids

    def add(self, message_id):
        self.ids[message_id] = None
        if len(self.ids) > self.limit:
            self.ids.popitem(last=False)


class CrmClient:
    def __init__(self, connection, once):
        self.once = once
        self.seen = SeenIds()
        # Replies published by this process whose outcome has not come yet.
        self.pending = set()
        self.published_any = False
        self.failed_any = False
        # A channel for publishing, in confirm mode: basic_publish returns
        # only once RabbitMQ has the reply, and raises if it was refused
        # (NackError) or routed nowhere (UnroutableError, with mandatory).
        # The bridge's outgoing exchange sends a routing key that names no
        # channel to its unrouted queue, and the CRM gets a message.failed
        # with reason unknown_channel.
        self.publisher = connection.channel()
        self.publisher.confirm_delivery()
        # A channel for consuming, taking a few events at a time.
        self.consumer = connection.channel()
        self.consumer.basic_qos(prefetch_count=10)

    def publish_reply(self, channel, message_id, text, recipient_id):
        """Publishes a reply (docs/schemas/outgoing-reply.json) to `channel`.

        `message_id` is the idempotency key: the bridge sends a reply with the
        same channel and message_id at most once, so publishing it again after
        a crash is safe.
        """
        reply = {"message_id": message_id, "recipient_id": recipient_id, "text": text}
        self.publisher.basic_publish(
            exchange=OUTGOING_EXCHANGE,
            routing_key=channel,
            body=json.dumps(reply).encode("utf-8"),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=message_id,
                # The bridge counts the wait for credits from this (seconds).
                timestamp=int(time.time()),
            ),
            mandatory=True,
        )
        self.pending.add(message_id)
        self.published_any = True
        say("published", message_id=message_id, channel=channel, recipient_id=recipient_id)

    def on_delivery(self, channel, method, properties, body):
        """Handles one event, then acks it.

        An exception here leaves the event unacked: the process stops, and
        RabbitMQ delivers the event again to the next consumer.
        """
        message_id = properties.message_id
        if message_id and message_id in self.seen:
            say("duplicate", message_id=message_id, action="skipped")
        else:
            self.handle(json.loads(body), message_id)
            if message_id:
                self.seen.add(message_id)
        channel.basic_ack(delivery_tag=method.delivery_tag)
        if self.once and self.published_any and not self.pending:
            channel.stop_consuming()

    def handle(self, event, message_id):
        kind = event.get("type")
        if kind == "message.received":
            sender = event["sender"]
            say("message.received", message_id=message_id, channel=event["channel"],
                event_id=event["event_id"], sender=sender["id"], text=event["text"])
            # A real CRM stores the DM and shows it to an agent. Here we answer
            # at once. Deriving the reply's id from the DM's id makes the reply
            # idempotent: if we crash before the ack, the DM comes again, and
            # the bridge drops the second copy of the reply.
            self.publish_reply(
                event["channel"],
                f"auto-{event['event_id']}",
                "Thanks for your message! An agent will answer shortly.",
                sender["id"],
            )
        elif kind == "message.sent":
            self.pending.discard(event["message_id"])
            say("message.sent", message_id=event["message_id"], channel=event["channel"],
                dm_event_id=event["dm_event_id"])
        elif kind == "message.failed":
            # The reply was dead-lettered: show the agent `detail` and let them
            # act on `reason` (docs/integrator.md, "Reasons").
            self.pending.discard(event["message_id"])
            self.failed_any = True
            say("message.failed", message_id=event["message_id"], channel=event["channel"],
                reason=event["reason"], detail=event["detail"])
        elif kind == "channel.state":
            # Show it on the channel in the CRM; clear the warning on `ok`. A
            # repeat of the last state is possible (at each bridge connect).
            state = event["state"]
            extra = {"detail": event["detail"]} if "detail" in event else {}
            say("channel.state", channel=event["channel"], state=state,
                note=STATE_NOTES.get(state, "unknown state"), **extra)
        else:
            # message.echo, conversation.typing, message.read: not used here.
            say("ignored", message_id=message_id, type=kind)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reply-to", metavar="USER_ID",
                        help=f"publish one reply to this X user id on channel {CHANNEL!r} at start")
    parser.add_argument("--once", action="store_true",
                        help="exit once every reply published has been sent or has failed")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up after this long (exit status 2)")
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    client = CrmClient(connection, args.once)
    timed_out = []
    if args.timeout:
        def give_up():
            timed_out.append(True)
            client.consumer.stop_consuming()
        connection.call_later(args.timeout, give_up)
    if args.reply_to:
        client.publish_reply(CHANNEL, f"example-{uuid.uuid4()}",
                             "Hello from the example CRM client!", args.reply_to)
    # The bridge declares the queue; consuming fails with NOT_FOUND until it ran once.
    try:
        client.consumer.basic_consume(INCOMING_QUEUE, client.on_delivery, auto_ack=False)
        say("consuming", queue=INCOMING_QUEUE)
        client.consumer.start_consuming()
    except KeyboardInterrupt:
        pass
    except pika.exceptions.AMQPError as error:
        # This example stops when RabbitMQ closes the connection or a channel;
        # events it had not acked go back to the queue. A real CRM reconnects
        # with backoff and consumes again.
        print(f"error: {error!r}", file=sys.stderr)
        return 1
    connection.close()
    if timed_out:
        say("timeout", pending=len(client.pending))
        return 2
    return 1 if client.failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
