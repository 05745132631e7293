"""Turning boto3/botocore failures into the engine's typed errors, with one useful line each.

The CLI prints ``str(error)`` as is, so every message names the bucket (and key when there is
one) and says what the user can do about it. Nothing here ever sees or prints credentials:
botocore's own messages do not contain them, and we add only names and HTTP codes.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)

from ..errors import (
    AlreadyExists,
    BackendConfigError,
    BackendError,
    MissingBucket,
    NotFound,
    PermissionDenied,
    TransientError,
)

#: Error codes S3 servers use for "slow down / try later". HTTP 5xx are transient as well.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "OperationAborted", "PriorRequestNotComplete",
    "EC2ThrottledException", "BandwidthLimitExceeded",
    # AWS: another conditional write of the same key was in flight (409); the retry then meets
    # 412 if that write succeeded.
    "ConditionalRequestConflict",
    # The payload did not match its Content-MD5: it was damaged on the way, so send it again.
    "BadDigest", "XAmzContentSHA256Mismatch",
})

CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the server does not know this access key: check AWS_ACCESS_KEY_ID "
                          "or AWS_PROFILE, and that the endpoint is the right one",
    "SignatureDoesNotMatch": "the request signature does not match: check AWS_SECRET_ACCESS_KEY "
                             "(or the profile's secret key)",
    "ExpiredToken": "the session token has expired: refresh the credentials",
    "TokenRefreshRequired": "the session token has expired: refresh the credentials",
    "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN",
    "InvalidSecurity": "the security token is invalid: check the credentials",
    "AccountProblem": "the account behind these credentials cannot be used: check the account",
    "AllAccessDisabled": "all access to this bucket has been disabled",
}

CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where "
                    "an instance/container role is available")


def error_code(exc: ClientError) -> tuple[str, int]:
    """The S3 error code (``""`` if none) and HTTP status of a failed request."""
    code = str(exc.response.get("Error", {}).get("Code", "") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_not_implemented(exc: ClientError) -> bool:
    code, status = error_code(exc)
    return status == 501 or code == "NotImplemented"


class ErrorMapper:
    """Maps exceptions of one bucket's requests; ``where(name)`` renders an object's address."""

    def __init__(self, bucket: str, base: str, endpoint: str | None) -> None:
        self.bucket = bucket
        self.base = base  # key prefix including its trailing "/", or ""
        self.endpoint = endpoint

    def where(self, name: str | None) -> str:
        if name is None:
            return f"bucket {self.bucket!r}"
        return f"s3:{self.bucket}/{self.base}{name}"

    def bucket_missing(self) -> MissingBucket:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return MissingBucket(
            f"bucket {self.bucket!r} does not exist{at}: create the repository with 'snap init' "
            f"(it creates the bucket), or check the bucket name, the region (AWS_REGION) and the "
            f"endpoint")

    def map(self, exc: BaseException, op: str, name: str | None = None) -> BackendError:
        """The typed error for ``exc`` raised by operation ``op`` on object ``name``."""
        where = self.where(name)
        if isinstance(exc, ClientError):
            return self._map_client_error(exc, op, name, where)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return PermissionDenied(f"no usable AWS credentials for {where}: {CREDENTIALS_HINT}",
                                    name)
        if isinstance(exc, SSLError):
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                return BackendConfigError(
                    f"TLS certificate of {self.endpoint or 'the S3 endpoint'} not trusted: use the "
                    f"right host name, or point AWS_CA_BUNDLE at its CA certificate", name)
            return TransientError(f"TLS error during {op} {where}: {exc}", name)
        if isinstance(exc, EndpointConnectionError):
            return TransientError(
                f"cannot connect to {self.endpoint or 'S3'} for {op} {where}: check the endpoint "
                f"URL and the network", name)
        if isinstance(exc, (HTTPClientError, BotoConnectionError, IncompleteReadError, OSError)):
            # Timeouts, resets, truncated bodies: the request may well succeed when repeated.
            return TransientError(f"connection problem during {op} {where}: {exc}", name)
        if isinstance(exc, BotoCoreError):
            return BackendError(f"S3 {op} {where} failed: {exc}", name)
        return BackendError(f"S3 {op} {where} failed: {type(exc).__name__}: {exc}", name)

    def _map_client_error(self, exc: ClientError, op: str, name: str | None,
                          where: str) -> BackendError:
        code, status = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message") or "").strip()
        detail = f"{code or 'HTTP ' + str(status)}" + (f": {message}" if message else "")
        if code == "NoSuchBucket":
            return self.bucket_missing()
        if code == "PreconditionFailed" or status == 412:
            return AlreadyExists(f"object exists: {where}", name)
        if code in ("NoSuchKey", "NotFound", "NoSuchUpload") or status == 404:
            return NotFound(f"not found: {where}", name)
        if code in CREDENTIAL_CODES:
            return PermissionDenied(f"{op} {where} refused ({code}): {CREDENTIAL_CODES[code]}", name)
        if code == "AccessDenied" or status == 403:
            return PermissionDenied(
                f"access denied for {op} {where} ({detail}): the credentials lack permission for "
                f"this bucket or prefix (the README's S3 section lists the permissions snap "
                f"needs), or they are wrong ({CREDENTIALS_HINT})", name)
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException") \
                or status == 301:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            region = headers.get("x-amz-bucket-region") or exc.response.get("Error", {}).get("Region")
            hint = f"set AWS_REGION={region}" if region else "set AWS_REGION to the bucket's region"
            return BackendConfigError(f"bucket {self.bucket!r} is in another region: {hint}", name)
        if code == "RequestTimeTooSkewed":
            return BackendError(f"{op} {where} refused: this machine's clock is off by too much; "
                                f"fix the system time", name)
        if code in ("InvalidStorageClass",):
            return BackendConfigError(f"the server refuses the storage class for {where} ({detail}): "
                                      f"choose another --s3-storage-class", name)
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(f"S3 {op} {where}: temporary failure ({detail}), worth retrying",
                                  name)
        return BackendError(f"S3 {op} {where} failed ({detail})", name)
