"""Password hashing with argon2id (argon2-cffi), and the length rule.

Hashes use argon2-cffi's default parameters (RFC 9106's low-memory profile: argon2id, 3 passes,
64 MiB, 4 lanes) and carry them in the hash string, so a later change of parameters still verifies
old hashes and :func:`needs_rehash` says when to store a fresh one. There is no default password:
an account without a hash cannot log in.
"""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cxr_core.errors import CXRError

MIN_LENGTH = 12
#: Longer passwords are refused: hashing megabytes of text would be a cheap way to load the server.
MAX_LENGTH = 1024


class PasswordRejected(CXRError):
    """A new password does not meet the rules."""


class PasswordTooShort(PasswordRejected):
    """Fewer than :data:`MIN_LENGTH` characters."""


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id


def check_password_rules(password: str) -> None:
    """Raise :class:`PasswordRejected` unless ``password`` is 12 to 1024 characters."""
    if not isinstance(password, str):
        raise PasswordRejected(f"a password must be text, got {type(password).__name__}")
    if len(password) < MIN_LENGTH:
        raise PasswordTooShort(
            f"The password has {len(password)} characters; it needs at least {MIN_LENGTH} "
            "(a few words make a long password that is easy to remember).")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"The password has {len(password)} characters; at most {MAX_LENGTH} are accepted.")


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (checked against the rules first)."""
    check_password_rules(password)
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; ``False`` for no hash or a damaged one.

    Without a hash, a dummy hash is checked anyway, so an unknown account takes as long to refuse
    as a wrong password.
    """
    if not isinstance(password, str) or len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher().verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with other parameters than today's (store a fresh one at next login)."""
    try:
        return _hasher().check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher().hash("not a password: equalises the time of refusals")
