"""A gRPC echo service over HTTP/2 cleartext, and a client for it, on gRPC's
own library (grpcio). No generated code: messages are raw bytes, passed
through unchanged.

  revgate.echo.Echo/Say   unary: answers the request's bytes
  revgate.echo.Echo/Chat  bidirectional stream: answers each message as it comes

Serve (as a revision does: on $PORT, on 127.0.0.1, like a Knative pod's
container behind revgate's process runtime):

  PORT=8081 python3 examples/grpc-echo/echo.py serve

Call through a gateway, naming the Service's host as :authority; prints one
JSON line (the answers, or the gRPC status of a failure):

  python3 examples/grpc-echo/echo.py call 127.0.0.1:8080 grpc.default.example.com \
      --messages 6 --interval-ms 500

grpcio comes from scripts/install-tools.sh --test, into .tools/python:
run with PYTHONPATH=.tools/python.
"""

import argparse
import json
import os
import sys
import time
from concurrent import futures

import grpc

SERVICE = "revgate.echo.Echo"


def serve(port):
    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Chat": grpc.stream_stream_rpc_method_handler(lambda requests, context: (m for m in requests)),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handlers,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"grpc-echo listening on 127.0.0.1:{bound}", flush=True)
    server.wait_for_termination()


def call(target, authority, messages, interval_ms, deadline_s):
    options = [("grpc.default_authority", authority)]
    with grpc.insecure_channel(target, options=options) as channel:
        result = {}
        try:
            say = channel.unary_unary(f"/{SERVICE}/Say")
            result["unary"] = say(b"hello", timeout=deadline_s).decode()

            def outgoing():
                for i in range(messages):
                    if i:
                        # The stream's length is what is being shown: it
                        # stays open, active, longer than the request timeout.
                        time.sleep(interval_ms / 1000)
                    yield f"message {i}".encode()

            chat = channel.stream_stream(f"/{SERVICE}/Chat")
            started = time.monotonic()
            result["chat"] = [m.decode() for m in chat(outgoing(), timeout=deadline_s)]
            result["chat_seconds"] = round(time.monotonic() - started, 3)
        except grpc.RpcError as e:
            result["error"] = {"code": e.code().name, "details": e.details()}
        print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve on $PORT (or --port)")
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    call_cmd = commands.add_parser("call", help="call Say once, then Chat with --messages messages")
    call_cmd.add_argument("target", help="host:port of the gateway")
    call_cmd.add_argument("authority", help="the Service's host, sent as :authority")
    call_cmd.add_argument("--messages", type=int, default=3)
    call_cmd.add_argument("--interval-ms", type=int, default=0)
    call_cmd.add_argument("--deadline-s", type=float, default=60)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
    else:
        call(args.target, args.authority, args.messages, args.interval_ms, args.deadline_s)


if __name__ == "__main__":
    sys.exit(main())
