"""A ``multipart/form-data`` upload read as it arrives, with python-multipart's parser: the small fields kept
(64 KiB together at most), the one file field handed on in pieces — never spooled to memory or a temporary file
first, so an upload is written once, where it will live, and a limit stops it the moment it is passed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import bad_request

FIELDS_LIMIT = 64 * 1024  # bytes of the fields besides the file, together


class Upload:
    """The fields (``fields``, complete once :meth:`file` is exhausted) and the file (``filename``, its pieces)."""

    def __init__(self, content_type: str, body: AsyncIterator[bytes],
                 before_file: Callable[[dict[str, str]], None] | None = None) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise bad_request("The multipart body has no boundary in its Content-Type.", param="file")
        self.body = body
        self.before_file = before_file  # sees the fields sent before the file: refuse early, before its bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.files = 0
        self._field_bytes = 0
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._header = b""
        self._header_value = b""
        self._disposition = b""
        self._pieces: list[bytes] = []
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": self._header_field, "on_header_value": self._header_piece,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        })

    async def file(self) -> AsyncIterator[bytes]:
        """The file field's bytes as they come (nothing if the body has none)."""
        try:
            async for chunk in self.body:
                self._parser.write(chunk)
                if self._pieces:
                    pieces, self._pieces = self._pieces, []
                    for piece in pieces:
                        yield piece
            self._parser.finalize()
        except FormParserError:
            raise bad_request("The multipart body cannot be read.", param="file") from None
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            for piece in pieces:
                yield piece

    # --- the parser's callbacks -----------------------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._disposition, self._value, self._is_file = b"", bytearray(), False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_piece(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise bad_request("A multipart part has no name in its Content-Disposition.", param="file")
        self._name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file:
            self.files += 1
            if self.files > 1 or self._name != "file":
                raise bad_request("Upload one file, as the multipart field 'file'.", param="file")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            if self.before_file is not None:
                self.before_file(self.fields)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._pieces.append(data[start:end])
            return
        self._field_bytes += end - start
        if self._field_bytes > FIELDS_LIMIT:
            raise bad_request(f"The multipart fields besides the file are larger than {FIELDS_LIMIT} bytes.")
        self._value += data[start:end]

    def _part_end(self) -> None:
        if not self._is_file:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
