"""Publish to Herald rooms with a plain NATS client: the subject contract
(docs/SUBJECTS.md) is all a service needs.

    pip install nats-py
    herald dev &          # or any NATS with the HERALD stream set up
    python3 examples/python/publish.py [nats://127.0.0.1:4222]

Prints one line per step; exits non-zero if the stream is missing.
"""

import asyncio
import base64
import json
import re
import sys

import nats

PREFIX = "herald"


def encode_user(sub: str) -> str:
    """SUBJECTS.md §2: verbatim if [A-Za-z0-9_-]+, else '=' + unpadded base64url."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", sub):
        return sub
    return "=" + base64.urlsafe_b64encode(sub.encode()).rstrip(b"=").decode()


def room_subject(room: str) -> str:
    kind, rid = room.split(":", 1)  # rooms are validated <kind>:<id>; never dots
    return f"{PREFIX}.room.{kind}.{rid}"


async def main(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()

    # Durable, acknowledged, idempotent: the same Nats-Msg-Id is stored once.
    headers = {"Herald-Event": "message:new", "Nats-Msg-Id": "py-example-1"}
    body = json.dumps({"text": "hi from python"}).encode()
    ack = await js.publish(room_subject("channel:42"), body, headers=headers)
    again = await js.publish(room_subject("channel:42"), body, headers=headers)
    print(f"durable: stream={ack.stream} seq={ack.seq}; retry duplicate={again.duplicate} seq={again.seq}")

    # To every connection of one user (the private room user:<enc>).
    ack = await js.publish(
        f"{PREFIX}.room.user.{encode_user('a@b.io')}",
        json.dumps({"unread": 3}).encode(),
        headers={"Herald-Event": "inbox:count"},
    )
    print(f"to user a@b.io: seq={ack.seq}")

    # Volatile: core NATS on the live subject, no sequence, not stored.
    await nc.publish(
        f"{PREFIX}.live.room.channel.42",
        json.dumps({"user": "6"}).encode(),
        headers={"Herald-Event": "typing", "Herald-Exclude-User": encode_user("6")},
    )

    # Control: make user 6's connections join a room.
    await nc.publish(
        f"{PREFIX}.ctl.user.{encode_user('6')}",
        json.dumps({"op": "join", "room": "channel:42"}).encode(),
    )
    await nc.flush()
    print("volatile and control sent")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"))
