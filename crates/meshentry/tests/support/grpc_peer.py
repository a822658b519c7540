"""A real gRPC server and client (grpcio, raw-bytes messages, no generated code) that
proxy_h2.rs drives through the proxy.

  grpc_peer.py server IP
      Serves test.Echo on IP with a free port and prints the port. Unary replies with JSON
      {"echo": request} and a trailing metadata entry x-trailer; a request "fail:MSG" ends with
      FAILED_PRECONDITION and message MSG; "sleep:MS" waits MS milliseconds first. Stream
      replies with N messages item-0..item-N-1 for a request "N".

  grpc_peer.py client TARGET AUTHORITY unary|stream ARG
      Makes one call through TARGET (the proxy) with :authority AUTHORITY and prints JSON:
      {"reply": ..., "trailers": {...}} or {"replies": [...]}, or {"code", "details"} on error.
"""
import json
import sys
import time
from concurrent import futures

import grpc


def unary(request, context):
    text = request.decode()
    if text.startswith("fail:"):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, text[len("fail:"):])
    if text.startswith("sleep:"):
        time.sleep(int(text[len("sleep:"):]) / 1000)
    context.set_trailing_metadata((("x-trailer", "t-" + text),))
    return json.dumps({"echo": text}).encode()


def stream(request, context):
    for i in range(int(request.decode())):
        yield b"item-%d" % i


def serve(ip):
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("%s:0" % ip)
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def client(target, authority, method, arg):
    # No CONNECT proxy from the environment: the test names the proxy as the target.
    options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            if method == "unary":
                call = channel.unary_unary("/test.Echo/Unary")
                reply, outcome = call.with_call(arg.encode(), timeout=20)
                out = {"reply": json.loads(reply), "trailers": dict(outcome.trailing_metadata())}
            else:
                replies = channel.unary_stream("/test.Echo/Stream")(arg.encode(), timeout=20)
                out = {"replies": [r.decode() for r in replies]}
        except grpc.RpcError as e:
            out = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    else:
        client(*sys.argv[2:6])
