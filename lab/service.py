"""A tiny TCP service and its client, to prove traffic crosses a path.

``serve`` answers each line with ``<name> <line>``; ``ask`` sends a token and
succeeds only if the answer names the expected server and echoes the token.
Run as ``python -m lab.service serve|ask ...`` inside a lab node.
"""

import argparse
import socket
import socketserver
import sys


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(512).decode(errors="replace").strip()
        self.wfile.write(f"{self.server.name} {line}\n".encode())


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(address: str, port: int, name: str) -> None:
    with _Server((address, port), _Echo) as server:
        server.name = name
        server.serve_forever()


def ask(address: str, port: int, token: str, timeout: float) -> str:
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(f"{token}\n".encode())
        return sock.makefile().readline().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.service")
    sub = parser.add_subparsers(dest="action", required=True)
    serve_p = sub.add_parser("serve")
    serve_p.add_argument("--address", required=True)
    serve_p.add_argument("--port", type=int, required=True)
    serve_p.add_argument("--name", required=True)
    ask_p = sub.add_parser("ask")
    ask_p.add_argument("--address", required=True)
    ask_p.add_argument("--port", type=int, required=True)
    ask_p.add_argument("--token", required=True)
    ask_p.add_argument("--expect-name", required=True)
    ask_p.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.action == "serve":
        serve(args.address, args.port, args.name)
        return 0
    try:
        answer = ask(args.address, args.port, args.token, args.timeout)
    except OSError as exc:
        print(f"no answer from {args.address}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(answer)
    return 0 if answer == f"{args.expect_name} {args.token}" else 1


if __name__ == "__main__":
    sys.exit(main())
