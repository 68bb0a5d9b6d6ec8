"""HTTP statuses for refground's errors, decided in one table so every route answers alike.

Deliberate errors (:class:`~refground.errors.RefgroundError`) are the client's to fix and
become 4xx with the error's own message; the few conditions only the server knows about
(upload too large, wrong media type, options switched off, queue full) get their own classes
here so they travel through the same handler instead of ad-hoc ``HTTPException`` calls.
"""

from __future__ import annotations

from refground.errors import ConfigError, ImageError, InputError, RefgroundError


class UploadTooLargeError(InputError):
    """The request body or the uploaded file is larger than the server accepts."""


class MediaTypeError(ImageError):
    """The upload is declared as, or turns out to be, something other than a supported image."""


class OptionsNotAllowedError(ConfigError):
    """The client sent method options but the server was started without client options."""


class ServerBusyError(RefgroundError):
    """Too many requests are already waiting; the client should retry later."""


#: Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: tuple[tuple[type[RefgroundError], int], ...] = (
    (UploadTooLargeError, 413),
    (MediaTypeError, 415),
    (OptionsNotAllowedError, 403),
    (ServerBusyError, 503),
    (RefgroundError, 422),
)


def status_for(error: RefgroundError) -> int:
    """The HTTP status of a deliberate error (422 unless a more specific class says otherwise)."""
    return next(code for cls, code in STATUS_BY_ERROR if isinstance(error, cls))
