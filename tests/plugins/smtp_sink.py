#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A real SMTP server for the notification plugin's tests, on aiosmtpd (Debian: python3-aiosmtpd).

Usage: smtp_sink.py DIR [--user U --password P]

Listens on a free port of 127.0.0.1 and prints "PORT <n>" on stdout once it accepts connections. Every
message it accepts is written to DIR/<n>.eml: "X-Sink-Mail-From:" and "X-Sink-Rcpt-To:" lines first,
then the data as received; through a temporary name and a rename, so a reader never sees half a file.
Recipients at reject.example are refused with 550, at later.example with 451. With --user and
--password, AUTH (PLAIN, LOGIN) is required and allowed without TLS. Exits when stdin closes or on
SIGTERM.
"""
import argparse
import asyncio
import os
import signal
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rpartition("@")[2].lower()
        if domain == "reject.example":
            return "550 5.1.1 <%s>: no such user here" % address
        if domain == "later.example":
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.out_dir, "%d.eml" % self.count)
        with open(path + ".tmp", "wb") as f:
            f.write(b"X-Sink-Mail-From: " + envelope.mail_from.encode() + b"\r\n")
            for rcpt in envelope.rcpt_tos:
                f.write(b"X-Sink-Rcpt-To: " + rcpt.encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler(args.dir)
    kwargs = {}
    if args.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login == args.user.encode()
                  and auth_data.password == args.password.encode())
            # handled=False: the server answers 535 itself (handled=True would leave the
            # client waiting for an answer this function was meant to send).
            return AuthResult(success=ok, handled=False)
        kwargs = dict(authenticator=authenticator, auth_required=True, auth_require_tls=False)

    def factory():
        return SMTP(handler, hostname="sink.test", loop=loop, **kwargs)

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_reader(sys.stdin.fileno(), lambda: loop.stop() if not os.read(sys.stdin.fileno(), 4096) else None)
    print("PORT %d" % port, flush=True)
    loop.run_forever()
    server.close()


if __name__ == "__main__":
    main()
