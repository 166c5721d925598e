"""What the bridge sends to OliAI, as marshmallow schemas: validated before a request spends a
rate-limit token, and serialized here and nowhere else.

One schema per body: a contact (``POST /contacts``, and each item of ``/contacts/bulk``), a
contact patch, the bulk request, an import row (metadata flattened into top-level keys, as the
import format wants), the import request and an audience membership change. The rules are the
documented ones plus the client-side assumptions of oliai-api.md §12 (#7, #10, #12-#14, #17,
#26): a row that breaks one fails at once, alone, with the field named, instead of spending a
request on an answer we can predict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from bridge.exceptions import PayloadRefused
from bridge.phone import E164
from bridge.settings import LANGUAGE

#: Documented: ``POST /imports/api/bulk`` takes at most 10,000 contacts (oliai-api.md §9).
IMPORT_MAX_ROWS = 10_000
#: Not documented (#6, #17): at most 100 contacts per ``/contacts/bulk`` and 100 ids per
#: audience change, the page size the API uses everywhere.
BULK_MAX_ITEMS = 100
AUDIENCE_MAX_IDS = 100
MAX_NAME_CHARS = 100
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 1000
#: Keys an import row reserves for itself or its request (#26): never metadata keys there.
IMPORT_RESERVED = frozenset(
    {"name", "phoneNumber", "language", "metadata", "audienceId", "webhookUrl"}
)

PHONE_ERROR = "must be an E.164 phone number: + and 7 to 15 digits, e.g. +919876543210"
LANGUAGE_ERROR = "must be a language code such as hi-IN"


class MetadataValue(fields.Field):
    """A flat metadata value (#13): a string, number or boolean; no nesting, no null."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValidationError("must be a finite number")
            return value
        if isinstance(value, str):
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValidationError(f"longer than {MAX_METADATA_VALUE_CHARS} characters")
            return value
        raise ValidationError("must be a string, a number or true/false (no nesting)")


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be blank")


class ContactSchema(Schema):
    """``POST /contacts`` and each item of ``/contacts/bulk`` (always the full set, #7)."""

    class Meta:
        unknown = RAISE

    name = fields.String(
        required=True, validate=[validate.Length(min=1, max=MAX_NAME_CHARS), _not_blank]
    )
    phoneNumber = fields.String(  # noqa: N815 - the API's field name
        required=True, validate=validate.Regexp(E164, error=PHONE_ERROR)
    )
    language = fields.String(validate=validate.Regexp(LANGUAGE, error=LANGUAGE_ERROR))
    metadata = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=MAX_METADATA_KEY_CHARS)),
        values=MetadataValue(),
    )

    @validates("metadata")
    def _few_keys(self, value: dict, **kwargs: Any) -> None:
        if len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"more than {MAX_METADATA_KEYS} keys")


class ContactPatchSchema(ContactSchema):
    """``PATCH /contacts/:id``: any of the fields; metadata replaces the stored object (#13)."""

    name = fields.String(validate=[validate.Length(min=1, max=MAX_NAME_CHARS), _not_blank])
    phoneNumber = fields.String(  # noqa: N815
        validate=validate.Regexp(E164, error=PHONE_ERROR)
    )


class BulkContactsSchema(Schema):
    class Meta:
        unknown = RAISE

    contacts = fields.List(
        fields.Nested(ContactSchema),
        required=True,
        validate=validate.Length(min=1, max=BULK_MAX_ITEMS),
    )


class ImportRowSchema(Schema):
    """One row of ``/imports/api/bulk``: the contact fields, then metadata as top-level keys."""

    class Meta:
        unknown = RAISE

    name = ContactSchema._declared_fields["name"]
    phoneNumber = ContactSchema._declared_fields["phoneNumber"]  # noqa: N815
    language = ContactSchema._declared_fields["language"]
    metadata = ContactSchema._declared_fields["metadata"]

    @validates("metadata")
    def _importable_keys(self, value: dict, **kwargs: Any) -> None:
        if len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"more than {MAX_METADATA_KEYS} keys")
        clash = sorted(set(value) & IMPORT_RESERVED)
        if clash:
            raise ValidationError(f"key {clash[0]!r} is reserved in an import row")


class ImportSchema(Schema):
    class Meta:
        unknown = RAISE

    contacts = fields.List(
        fields.Dict(), required=True, validate=validate.Length(min=1, max=IMPORT_MAX_ROWS)
    )
    audienceId = fields.String(validate=validate.Length(min=1))  # noqa: N815
    webhookUrl = fields.Url(schemes={"http", "https"}, require_tld=False)  # noqa: N815


class AudienceMembersSchema(Schema):
    """``POST /audiences/:id/contacts`` and ``.../contacts/remove``."""

    class Meta:
        unknown = RAISE

    contactIds = fields.List(  # noqa: N815
        fields.String(validate=validate.Length(min=1)),
        required=True,
        validate=validate.Length(min=1, max=AUDIENCE_MAX_IDS),
    )


#: One instance of each: ``jobs.oliai`` serializes every body with ``.dump`` (the shape), and
#: the delivery code checks it with the functions below (``.load``, the rules) before a call.
CONTACT = ContactSchema()
CONTACT_PATCH = ContactPatchSchema()
BULK = BulkContactsSchema()
IMPORT_ROW = ImportRowSchema()
IMPORT = ImportSchema()
MEMBERS = AudienceMembersSchema()


def _load(schema: Schema, data: Any, where: str = "") -> dict:
    try:
        return schema.load(data)
    except ValidationError as exc:
        field, message = first_error(exc.messages)
        raise PayloadRefused(f"{where}{field}: {message}", field=f"{where}{field}") from None


def first_error(messages: Any, prefix: str = "") -> tuple[str, str]:
    """The first problem marshmallow found, as (dotted field path, message)."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            # marshmallow nests a dict value's error under "value": name the key itself
            if key in ("_schema", "value") and prefix:
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            return first_error(value, name)
    if isinstance(messages, list | tuple) and messages:
        if all(isinstance(m, str) for m in messages):
            return prefix or "body", str(messages[0])
        return first_error(messages[0], prefix)
    return prefix or "body", str(messages)


def contact(data: Mapping[str, Any]) -> dict:
    """The body of ``POST /contacts`` / one ``/contacts/bulk`` item; ``PayloadRefused`` names
    the field when OliAI would refuse it."""
    body = {k: v for k, v in data.items() if v is not None}
    if body.get("metadata") == {}:
        del body["metadata"]
    return _load(CONTACT, body)


def contact_patch(changes: Mapping[str, Any]) -> dict:
    return _load(CONTACT_PATCH, dict(changes))


def bulk_contacts(items: Iterable[Mapping[str, Any]]) -> dict:
    """``{"contacts": [...]}`` for ``/contacts/bulk``; a bad item is named by its position."""
    return _load(BULK, {"contacts": [contact(item) for item in items]})


def import_row(data: Mapping[str, Any]) -> dict:
    """One import row: ``{name, phoneNumber, language?, <metadata keys>...}``."""
    body = {k: v for k, v in data.items() if v is not None}
    loaded = _load(IMPORT_ROW, body)
    metadata = loaded.pop("metadata", None) or {}
    return {**loaded, **metadata}


def import_request(
    rows: list[dict], audience_id: str | None = None, webhook_url: str | None = None
) -> dict:
    """The body of ``POST /imports/api/bulk`` (rows already made by ``import_row``)."""
    body: dict[str, Any] = {"contacts": rows}
    if audience_id is not None:
        body["audienceId"] = audience_id
    if webhook_url is not None:
        body["webhookUrl"] = webhook_url
    return _load(IMPORT, body)


def audience_members(contact_ids: Iterable[str]) -> dict:
    return _load(MEMBERS, {"contactIds": list(contact_ids)})
