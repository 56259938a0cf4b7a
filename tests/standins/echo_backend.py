"""A hostile backend for kmsgw's tests: it answers every request with an error
whose body repeats everything it received (method, path, every header, the
body), in the places a careless backend would: the JSON `error`,
`error_description` and `message` fields. `POST /token` answers with a token
(`--token`) so that an OAuth2 client obtains one and then sends it; `POST
/token-refused` refuses, echoing the form (and so the client secret).

Run: python3 echo_backend.py --port PORT [--token TOKEN]
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="obtained-access-token-echoed-back-9f3a")
    args = parser.parse_args()

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def echo(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            if self.command == "POST" and self.path == "/token":
                self.answer(200, {"access_token": args.token, "token_type": "Bearer", "expires_in": 3600})
                return
            # Credentials first: a client that cuts long messages still gets them.
            credentials = " ".join(
                f"{name}: {self.headers[name]}"
                for name in ("Authorization", "X-Vault-Token")
                if name in self.headers
            )
            seen = f"{credentials} {body} {self.command} {self.path} {dict(self.headers.items())}"
            status = 401 if self.path == "/token-refused" else 400
            self.answer(status, {
                "error": "invalid_request" if status == 401 else seen,
                "error_description": seen,
                "message": seen,
                "errors": [seen],
            })

        do_GET = do_POST = do_PUT = do_DELETE = echo

        def log_message(self, fmt, *values):
            print("echo:", fmt % values, flush=True)

    ThreadingHTTPServer(("127.0.0.1", args.port), Echo).serve_forever()


if __name__ == "__main__":
    main()
