#!/usr/bin/env python3
"""SASL PLAIN in front of a Kafka-compatible broker that lacks it (tansu), for tests.

    sasl-plain.py LISTEN_PORT UPSTREAM_HOST:PORT USER PASSWORD

Every connection must authenticate first: SaslHandshake (v0, v1) naming PLAIN, then the
PLAIN credentials in SaslAuthenticate (v0, v1; or, with handshake v0, as a bare frame).
ApiVersions may come before them and is answered by the broker, which already lists both
SASL requests. A connection that sends anything else first, names another mechanism or
the wrong credentials gets the broker's error for it and is closed. After that, bytes pass
through unchanged. The broker must advertise this listener's address, so that clients
come back through it.
"""

import asyncio
import struct
import sys

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58


async def read_frame(reader):
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def frame(payload):
    return struct.pack(">i", len(payload)) + payload


def kafka_string(data, at):
    """A non-nullable int16-length string at `at`; returns it and the offset after it."""
    (length,) = struct.unpack_from(">h", data, at)
    at += 2
    return data[at : at + max(length, 0)].decode(), at + max(length, 0)


def request_body(request):
    """Splits a v1 request header (key, version, correlation id, client id) from its body."""
    key, version, correlation = struct.unpack_from(">hhi", request)
    (client_id_length,) = struct.unpack_from(">h", request, 8)
    return key, version, correlation, request[10 + max(client_id_length, 0) :]


def plain_credentials(token):
    """authzid NUL user NUL password."""
    parts = token.split(b"\0")
    if len(parts) != 3:
        return None, None
    return parts[1].decode(errors="replace"), parts[2].decode(errors="replace")


def authenticate_response(correlation, version, error, message):
    body = struct.pack(">ih", correlation, error)
    if message is None:
        body += struct.pack(">h", -1)
    else:
        encoded = message.encode()
        body += struct.pack(">h", len(encoded)) + encoded
    body += struct.pack(">i", 0)  # no auth bytes back
    if version >= 1:
        body += struct.pack(">q", 0)  # no session lifetime
    return frame(body)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(client_reader, client_writer, upstream, user, password):
    host, port = upstream.rsplit(":", 1)
    try:
        broker_reader, broker_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        # No broker behind the listener: the client sees its connection closed, as it would
        # if the broker itself were down.
        client_writer.close()
        return
    handshake_version = None
    try:
        while True:
            request = await read_frame(client_reader)
            if handshake_version == 0:
                # Handshake v0: the PLAIN token follows as a bare frame, answered with an
                # empty frame on success.
                if plain_credentials(request) != (user, password):
                    return
                client_writer.write(frame(b""))
                break
            key, version, correlation, body = request_body(request)
            if key == API_VERSIONS:
                broker_writer.write(frame(request))
                client_writer.write(frame(await read_frame(broker_reader)))
            elif key == SASL_HANDSHAKE and version <= 1:
                mechanism, _ = kafka_string(body, 0)
                ok = mechanism == "PLAIN"
                error = 0 if ok else UNSUPPORTED_SASL_MECHANISM
                name = b"PLAIN"
                client_writer.write(
                    frame(struct.pack(">ihih", correlation, error, 1, len(name)) + name)
                )
                if not ok:
                    return
                handshake_version = version
            elif key == SASL_AUTHENTICATE and version <= 1 and handshake_version == 1:
                (length,) = struct.unpack_from(">i", body, 0)
                token = body[4 : 4 + length]
                if plain_credentials(token) != (user, password):
                    client_writer.write(
                        authenticate_response(
                            correlation,
                            version,
                            SASL_AUTHENTICATION_FAILED,
                            "Authentication failed: invalid username or password",
                        )
                    )
                    return
                client_writer.write(authenticate_response(correlation, version, 0, None))
                break
            else:
                error = ILLEGAL_SASL_STATE
                client_writer.write(frame(struct.pack(">ih", correlation, error)))
                return
            await client_writer.drain()
        await client_writer.drain()
        await asyncio.gather(
            pipe(client_reader, broker_writer), pipe(broker_reader, client_writer)
        )
    except (ConnectionError, asyncio.IncompleteReadError, struct.error):
        pass
    finally:
        for writer in (client_writer, broker_writer):
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()


async def main():
    port, upstream, user, password = sys.argv[1:5]
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, upstream, user, password), "127.0.0.1", int(port)
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
