"""A tiny HTTP server that answers every request with its own name, so you
can see which backend the gateway picked. Usage: echo_server.py NAME PORT"""
import http.server
import sys

NAME, PORT = sys.argv[1], int(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = f"{NAME} answered {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", NAME)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
