#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora into tests/fuzz/corpus/<target>/.

The seeds are committed; run this again only to change them.  It writes
seed-* files and leaves every other file (the crash-* regression cases)
alone.  Each target's first input byte is a config byte (see the target's
header comment): the seeds use printable ones.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ http
# Config byte: bits 0-1 max_head {16K, 64, 512, 4096}, bits 2-3 max_body
# {64K, 0, 16, 1024}, bit 4 drop bodies at the head.  '@' is the server's
# defaults, 'P' the same dropping bodies, 'A' a 64-byte head, 'H' a 16-byte
# body.
HTTP = {
    "get": "@GET /hello?x=1&y=%20z HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n",
    "sse": "@GET /events?lastEventId=7 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n"
           "Last-Event-ID: 42\r\nCache-Control: no-cache\r\n\r\n",
    "post-length": "@POST /messages HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                   "Content-Length: 15\r\n\r\n{\"text\":\"hi!\"}\n",
    "post-chunked": "@POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "pipelined": "@GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\n"
                 "Content-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "http10-keepalive": "@GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "expect": "@PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    "expect-bad": "@PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 4\r\n\r\nbody",
    "upgrade": "@GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x05hello",
    "connect": "@CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01",
    "options-star": "@OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-uri": "@GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "cl-and-te": "@POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl-twice": "@POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "te-not-chunked": "@POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "te-chunked-identity": "@POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-empty": "@POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
    "bad-chunk-size": "@POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
    "huge-chunk-size": "@POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    "space-in-name": "@GET / HTTP/1.1\r\nHost : a\r\nA B: c\r\n\r\n",
    "obs-fold": "@GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
    "whitespace-values": "@GET / HTTP/1.1\r\nHost:   a  \t\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    "lf-only": "@GET /lf HTTP/1.1\nHost: a\nX: y\n\n",
    "http2": "@GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "http09": "@GET /\r\n\r\n",
    "bad-method": "@FETCH / HTTP/1.1\r\nHost: a\r\n\r\n",
    "preface": "@PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "head-too-big": "AGET /a-rather-long-path-that-fills-the-head HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "body-too-big": "HPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n0123456789abcdefg",
    "chunked-too-big": "HPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n",
    "drop-body": "PPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\nHost: a\r\n\r\n",
    "many-headers": "@GET / HTTP/1.1\r\n" + "".join("X-H%d: %d\r\n" % (i, i) for i in range(101)) + "\r\n",
    "nul-in-url": "@GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
    "ctl-in-value": "@GET / HTTP/1.1\r\nHost: a\x01b\r\nX: \x7f\r\n\r\n",
    "data-after-close": "@GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
}

# --------------------------------------------------------------- sse_parse
# Config byte: low 3 bits pick max_event {16M, 1, 3, 8, 32, 128, 1024, 16M}:
# '0' the default, '3' 8 bytes, '5' 128 bytes.
SSE = {
    "openai": "0" + "".join(
        'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
        '"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % w for w in ["Hel", "lo", "!"])
        + "data: [DONE]\n\n",
    "anthropic": "0event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
                 "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                 "\"delta\":{\"text\":\"Hi\"}}\n\n: ping\n\nevent: message_stop\n"
                 "data: {\"type\":\"message_stop\"}\n\n",
    "bom": "0\ufeffdata: after a BOM\n\n\ufeffdata: not a second BOM\n\n",
    "crlf": "0event: a\r\ndata: 1\r\ndata: 2\r\n\r\nid: 9\r\ndata: 3\r\n\r\n",
    "cr": "0data: a\rdata: b\r\rdata: c\r\n\n\r",
    "mixed-endings": "0data:x\n\rdata:y\r\n\r\ndata:z\r\r\n\n",
    "fields": "0data\ndata:\ndata:  two spaces\nevent\n:comment\n: spaced\nid\nunknown: x\n"
              "retry: 10a\nretry: 3000\n\n",
    "id-nul": "0id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\nid\ndata: c\n\n",
    "type-without-data": "0event: lost\n\ndata: plain\n\nevent: kept\ndata: x\n\n",
    "retry-only": "0retry: 1500\n\nretry: 99999999999999999999999\ndata: big\n\n",
    "unterminated": "0data: complete\n\ndata: dropped at end",
    "comment-stream": "0:\n: keepalive\n:::\n\n",
    "long-line-small-max": "3data: 0123456789\n\n",
    "long-data-small-max": "3data: 12\ndata: 34\ndata: 56\n\n",
    "small-max-ok": "5event: e\ndata: small\nid: 1\n\n",
    "bom-small-max": b"1\xef\xbb\xbfd\n",
    "partial-bom": b"0\xef\xbbdata: x\n\n",
    "utf8": "0data: héllo wörld 日本 😀\n\n",
}

# ------------------------------------------------------------- sse_encode
# Byte 0: flags 1 data, 2 event, 4 id, 8 retry, 16 empty comment; then the
# event length, the id length, 8 bytes of retry, event, id, data.


def enc(data=None, event=None, id=None, retry=None, empty_comment=False):
    flags = 0
    out = b""
    if data is not None:
        flags |= 1
    if event is not None:
        flags |= 2
        out += bytes([len(event)])
    if id is not None:
        flags |= 4
        out += bytes([len(id)])
    if retry is not None:
        flags |= 8
        out += struct.pack("<q", retry)
    if empty_comment:
        flags |= 16
    out += (event or b"") + (id or b"") + (data or b"")
    return bytes([flags]) + out


ENC = {
    "data": enc(b"hello"),
    "data-lines": enc(b"a\nb\r\nc\rd\n\ne\r\r"),
    "data-empty": enc(b""),
    "data-json": enc(b'{"text":"hi","n":[1,2,3]}'),
    "all-fields": enc(b"line 1\nline 2", b"update", b"42", 3000),
    "empty-fields": enc(b"", b"", b"", 0),
    "leading-spaces": enc(b" x\n  y", b" ev", b" id"),
    "event-with-lf": enc(b"x", b"bad\nevent"),
    "id-with-nul": enc(b"x", None, b"1\x002"),
    "id-with-cr": enc(b"x", b"ok", b"1\r2"),
    "nothing": enc(),
    "retry-only": enc(None, None, None, 2000),
    "retry-max": enc(b"x", None, None, 2**63 - 1),
    "retry-negative": enc(b"x", None, None, -5),
    "id-only": enc(None, None, b"7"),
    "comment-empty": enc(None, None, None, None, True),
    "nul-in-data": enc(b"a\x00b\n\x00"),
    "utf8": enc("héllo 😀".encode(), "ünï".encode()),
}

# ------------------------------------------------------------------ json
JSON = {
    "object": '{"a":1,"b":[true,false,null],"c":{"d":"e"}}',
    "array": '[1,-2,3.5,"x",[],{},null]',
    "scalars-null": "null",
    "scalar-string": '"just a string"',
    "scalar-number": "-0.0",
    "numbers": "[0,-0,1e3,1E-3,-1.5e308,5e-324,9223372036854775807,-9223372036854775808,"
               "0.1,123456789.123456789]",
    "big-int": "[9223372036854775808]",
    "escapes": r'["\"\\\/\b\f\n\r\t","\u00e9\u65e5","\ud83d\ude00","a\u0000b"]',
    "lone-surrogate": r'["\ud800"]',
    "nul-key": r'{"a\u0000b":1}',
    "duplicate-keys": '{"a":1,"a":2}',
    "numeric-keys": '{"1":"one","2":"two","10":"ten"}',
    "empty-key": '{"":0}',
    "nested": '{"a":[{"b":[{"c":[[[[1]]]]}]}]}',
    "empty": "[[],{},[{}],{\"x\":[]}]",
    "openai-chunk": '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
                    '"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant",'
                    '"content":"Hi"},"logprobs":null,"finish_reason":null}]}',
    "trailing-comma": "[1,2,]",
    "single-quotes": "{'a':1}",
    "bad-utf8": b'["\xff\xfe"]',
    "whitespace": " \t\n\r[ 1 , 2 ]\r\n ",
    "nan": "[NaN]",
    "trailing-garbage": "{} x",
    "unicode-keys": '{"ключ":"значение","😀":1}',
}


# Lua-to-JSON programs for fuzz_json: 0xFF, then ops (see build() in
# fuzz_json.c): 0 nil, 1 bool, 2 int64, 3 int8, 4 double, 5 int8/4, 6 string,
# 7 json.null, 8 table (count, key/value pairs), 9 array (count | 8 to mark).
def lua_prog(*ops):
    return b"\xff" + b"".join(bytes(o) if isinstance(o, list) else o for o in ops)


JSON_LUA = {
    "lua-table": lua_prog([8, 2], [3, 5], [6, 1], b"a", [6, 1], b"x", [1, 1]),
    "lua-array": lua_prog([9, 3], [3, 1], [5, 2], [7]),
    "lua-marked-empty": lua_prog([9, 8]),
    "lua-empty-table": lua_prog([8, 0]),
    "lua-nested": lua_prog([9, 2], [8, 1], [6, 1], b"k", [9, 1], [2], struct.pack("<q", -2**63), [0]),
    "lua-float": lua_prog([4], struct.pack("<d", 0.1)),
    "lua-nan": lua_prog([4], struct.pack("<d", float("nan"))),
    "lua-bad-utf8": lua_prog([6, 2], b"\xc3\x28"),
    "lua-bool-key": lua_prog([8, 1], [1, 1], [3, 1]),
    "lua-sparse": lua_prog([8, 2], [3, 1], [3, 1], [3, 3], [3, 3]),
}


def main():
    for name, data in HTTP.items():
        write("http", name, data.encode("latin-1"))
    for name, data in SSE.items():
        write("sse_parse", name, data)
    for name, data in ENC.items():
        write("sse_encode", name, data)
    for name, data in JSON.items():
        write("json", name, data)
    for name, data in JSON_LUA.items():
        write("json", name, data)


if __name__ == "__main__":
    main()
