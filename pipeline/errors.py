"""One vocabulary of failure, shared by readers, tasks, the batch actor, the runner, the
Serve endpoint and the CLI.

`ErrorKind` names why one (row, task) has no result: it is the `error_kind` column of the
errors dataset and the `error.kind` of an online answer. `ExitStatus` is what the
`pipeline` command returns; `PipelineError` is the base of every error that reaches a
person as one line (its `exit_status` says which status).
"""

from __future__ import annotations

import enum


class ErrorKind(str, enum.Enum):
    """Why a row (or a row and task) has no result. The value is what lands in Parquet."""

    # The input record itself (readers).
    MALFORMED_RECORD = "malformed_record"  # bad JSON, a CSV row with stray quotes or a wrong field count
    INVALID_UTF8 = "invalid_utf8"
    INVALID_TEXT = "invalid_text"  # NUL bytes, lone surrogates
    MISSING_FIELD = "missing_field"
    EMPTY_TEXT = "empty_text"
    READ_ERROR = "read_error"  # the file could not be read from this row on
    DUPLICATE_ID = "duplicate_id"  # a second row with an id already seen
    # The request (task execution).
    TOO_LONG = "too_long"  # does not fit the context (policy reject)
    INVALID_OUTPUT = "invalid_output"  # the answer could not be parsed
    TRUNCATED_OUTPUT = "truncated_output"  # cut at max_tokens, or empty (policy error)
    GENERATION_ERROR = "generation_error"  # the engine failed this one request
    TIMEOUT = "timeout"  # online: the request ran past its deadline (504)
    # The online request as a whole (pipeline serve): the `error.kind` of a non-200 answer.
    # Also a request line of an OpenAI batch file (input.format openai_batch, the chat task)
    # that is not a valid request: method, body, messages, a parameter's value.
    INVALID_REQUEST = "invalid_request"  # a malformed body, a bad parameter or a limit passed (400/422)
    # A batch request line valid for OpenAI that is not served here: another url, n > 1, tools, ...
    UNSUPPORTED_REQUEST = "unsupported_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the body is over limits.max_body_bytes (413)
    UNAUTHORIZED = "unauthorized"  # no or a wrong API key (401)
    NOT_FOUND = "not_found"  # no such route or model (404)
    OVERLOADED = "overloaded"  # turned away for load, retry after Retry-After (503 or 429)
    UNAVAILABLE = "unavailable"  # the replica's engine is dead or stuck and being replaced (503)
    INTERNAL_ERROR = "internal_error"  # a bug: never expected (500)

    def __str__(self) -> str:  # f-strings and logs show the value
        return self.value


# The kinds a reader can produce (before any task runs).
INPUT_KINDS = frozenset(
    {
        ErrorKind.MALFORMED_RECORD,
        ErrorKind.INVALID_UTF8,
        ErrorKind.INVALID_TEXT,
        ErrorKind.MISSING_FIELD,
        ErrorKind.EMPTY_TEXT,
        ErrorKind.READ_ERROR,
        ErrorKind.DUPLICATE_ID,
        ErrorKind.INVALID_REQUEST,
        ErrorKind.UNSUPPORTED_REQUEST,
    }
)


class ExitStatus(enum.IntEnum):
    """Exit statuses of the `pipeline` command (documented in the README)."""

    OK = 0  # done (or nothing to do)
    FAILED = 1  # the run failed; nothing partial was published; rerunning resumes
    USAGE = 2  # invalid job spec or flags: nothing was started
    BUSY = 3  # the output is held by another live writer (see `pipeline runs`)


class PipelineError(RuntimeError):
    """An error that reaches a person as one line; the message says what to do."""

    exit_status: ExitStatus = ExitStatus.FAILED


class UsageError(PipelineError, ValueError):
    """Invalid configuration or flags, found before anything started."""

    exit_status = ExitStatus.USAGE
