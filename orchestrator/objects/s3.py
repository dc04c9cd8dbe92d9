"""``ObjectStore`` on Amazon S3."""

from __future__ import annotations

from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from orchestrator.aws_common import (
    BUCKET_EXISTS,
    BUCKET_MISSING,
    DEFAULT_REGION,
    FORBIDDEN,
    OBJECT_MISSING,
    client,
    error_code,
)
from orchestrator.base import ObjectStore
from orchestrator.errors import ConfigError, ObjectArchived, ObjectNotFound
from orchestrator.objects.keys import check_data, validate_key

NOT_FOUND = OBJECT_MISSING


MAX_PRESIGN_S = 7 * 24 * 3600
RESTORE_TIERS = ("Expedited", "Standard", "Bulk")


class S3ObjectStore:
    presigns = True
    def __init__(self, bucket: str, *, prefix: str = "", region: str = DEFAULT_REGION, s3_client: Any = None,
                 storage_class: str | None = None, create: bool = True, restore_tier: str | None = None) -> None:
        if restore_tier is not None and restore_tier not in RESTORE_TIERS:
            raise ConfigError(f"restore tier {restore_tier!r}: one of {', '.join(RESTORE_TIERS)}")
        #: the Glacier retrieval tier a restore asks for (None: Expedited, else Standard)
        self.restore_tier = restore_tier
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.storage_class = storage_class  # e.g. GLACIER for the archive
        self.s3 = s3_client or client("s3", region=region)
        if create:
            self.ensure_bucket()

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists; an existing one is never asked for again, so a
        worker whose role may only read and write objects starts fine."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = error_code(exc)
            if code in FORBIDDEN:
                return  # exists but not listable by us (or not ours): the object calls will tell
            if code not in BUCKET_MISSING:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.s3.create_bucket(**kwargs)
        except ClientError as exc:
            if error_code(exc) not in BUCKET_EXISTS:
                raise

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        check_data(data)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if self.storage_class:
            kwargs["StorageClass"] = self.storage_class
        self.s3.put_object(**kwargs)

    def put_file(self, key: str, source: BinaryIO) -> None:
        # boto3's managed upload: parts of 8 MB in turn (multipart past 8 MB), never the whole file
        extra = {"StorageClass": self.storage_class} if self.storage_class else None
        self.s3.upload_fileobj(source, self.bucket, self._key(key), ExtraArgs=extra)

    def get(self, key: str) -> bytes:
        """Raises ``ObjectNotFound``, or ``ObjectArchived`` for an object in Glacier (after
        asking S3 to restore it: a retry later finds it readable)."""
        try:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                raise ObjectNotFound(key) from exc
            if error_code(exc) == "InvalidObjectState":
                self._restore(key)
                raise ObjectArchived(f"{self.bucket}/{key} is archived; restore requested") from exc
            raise

    def _restore(self, key: str) -> None:
        # Expedited (minutes) where S3 offers it; Deep Archive has no expedited tier, and
        # expedited capacity can run out (503): then the standard tier (hours).
        tiers = ["Standard"] if self.storage_class == "DEEP_ARCHIVE" else ["Expedited", "Standard"]
        if self.restore_tier is not None:  # as configured; Expedited still falls back when S3 has none
            tiers = [self.restore_tier, "Standard"] if self.restore_tier == "Expedited" else [self.restore_tier]
        for tier in tiers:
            try:
                self.s3.restore_object(Bucket=self.bucket, Key=self._key(key),
                                       RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": tier}})
                return
            except ClientError as exc:
                code = error_code(exc)
                if code == "RestoreAlreadyInProgress":
                    return
                if code != "GlacierExpeditedRetrievalNotAvailable" or tier == tiers[-1]:
                    raise

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return False
            raise

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            # botocore signs any value; S3 refuses a SigV4 URL valid for more than seven days
            raise ValueError(f"expires_s must be 1..{MAX_PRESIGN_S} seconds, got {expires_s}")
        return str(self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=expires_s))


_: type[ObjectStore] = S3ObjectStore
