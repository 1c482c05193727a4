"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, refusing malformed requests in
the OpenAI error shape.

A request that is not valid HTTP (a bare CR or LF in a header, a NUL, a
folded header line, a non-numeric Content-Length...) never reaches the app:
the parser refuses it. uvicorn answers those with a plain-text 400; this
answers with the same status in the shape every other error has
(`400 invalid_request`), then closes the connection, as uvicorn does.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import InvalidRequest, render

_BODY = render(InvalidRequest(
    "The request is not valid HTTP/1.1 (malformed request line, header or framing)."))


class GatewayHttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            _BODY,
        ])
        self.transport.write(b"".join(content))
        self.transport.close()
