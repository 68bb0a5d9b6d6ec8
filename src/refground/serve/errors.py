"""HTTP statuses for refground's errors, decided in one table so every route answers alike.

Only errors about the request itself reach a client with their message: what was wrong with
the upload, the text, the boxes, the method name or the options, each saying what to change.
Their messages are built from what the client sent and from the server's limits, never from a
server path. Everything raised deeper (loading a model, reading a dataset or a cache, a
missing extra) describes the server: its files, directories and configuration. A client gets
a generic message for those and the server log gets the full one (:func:`is_client_error`
decides which is which, :class:`ServerFaultError` carries the generic message).
"""

from __future__ import annotations

from refground.errors import (
    BoxError,
    ConfigError,
    ImageError,
    InputError,
    RefgroundError,
    UnknownNameError,
)


class UploadTooLargeError(InputError):
    """The request body or the uploaded file is larger than the server accepts."""


class MediaTypeError(ImageError):
    """The upload is declared as, or turns out to be, something other than a supported image."""


class OptionsNotAllowedError(ConfigError):
    """The client sent method options the server does not let clients set (or any options,
    when the server was started without client options)."""


class BadOptionValueError(InputError):
    """A client-settable option has a value outside what the server allows."""


class MethodNotServedError(ConfigError):
    """The client asked for a registered method that this server was not started with."""


class ServerBusyError(RefgroundError):
    """Too many requests are already waiting; the client should retry later."""


class ServerFaultError(RefgroundError):
    """The server failed for a reason of its own (a model that will not load, a broken file);
    the message is generic on purpose, the log holds the cause."""


#: Errors whose message a client sees: about its request, made of what it sent.
CLIENT_ERRORS: tuple[type[RefgroundError], ...] = (
    InputError, ImageError, BoxError, UnknownNameError, OptionsNotAllowedError,
    MethodNotServedError, ServerBusyError, ServerFaultError)

#: Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: tuple[tuple[type[RefgroundError], int], ...] = (
    (UploadTooLargeError, 413),
    (MediaTypeError, 415),
    (OptionsNotAllowedError, 403),
    (MethodNotServedError, 403),
    (ServerBusyError, 503),
    (ServerFaultError, 500),
    (RefgroundError, 422),
)

GENERIC_MESSAGE = "internal server error; the server log has the details"


def is_client_error(error: BaseException) -> bool:
    """Whether ``error``'s own message may be sent to the client."""
    return isinstance(error, CLIENT_ERRORS)


def status_for(error: RefgroundError) -> int:
    """The HTTP status of a deliberate error (422 unless a more specific class says otherwise)."""
    return next(code for cls, code in STATUS_BY_ERROR if isinstance(error, cls))


def scrub(message: str, replacements: dict[str, str]) -> str:
    """``message`` with each server path in ``replacements`` replaced by its public name."""
    for private, public in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        if private:
            message = message.replace(private, public)
    return message
