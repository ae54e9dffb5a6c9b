"""https://pypi.org/simple/, for a sandbox whose /etc/hosts points pypi.org
at 127.0.0.1 and whose CA bundle trusts CERT's issuer: serves INDEX (what
software/test-isolation/make-index built: for each pin, the files pypi.org
has, byte for byte) as PyPI's simple API, /simple/NAME/ listing NAME's files.

    python3 pypi_mirror.py INDEX CERT KEY [PORT]
"""
import functools
import http.server
import os
import ssl
import sys


class Simple(http.server.SimpleHTTPRequestHandler):

    def translate_path(self, path):
        path = path.split('?', 1)[0].split('#', 1)[0]
        if path.startswith('/simple/'):
            path = path[len('/simple'):]
        return http.server.SimpleHTTPRequestHandler.translate_path(self, path)

    def log_message(self, *args):
        pass


def main():
    index, cert, key = sys.argv[1:4]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 443
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', port), functools.partial(Simple, directory=os.path.abspath(index)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
