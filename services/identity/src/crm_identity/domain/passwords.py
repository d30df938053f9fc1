"""Password hashing with argon2id (OWASP parameters), off the event loop: argon2 releases the GIL, so
concurrent sign-ins use every core."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from crm_kit.validation import Check

MIN_LENGTH = 8
MAX_LENGTH = 128


class Passwords:
    def __init__(self, *, memory_kib: int, time_cost: int, parallelism: int):
        self.hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        # Verified against when the email is unknown, so a miss costs as long as a hit (no user enumeration by timing).
        self.dummy_hash = self.hasher.hash("not a real password")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return await asyncio.to_thread(self.hasher.verify, password_hash or self.dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self.hasher.check_needs_rehash(password_hash)


def check_password(check: Check, field: str, password: str) -> None:
    if check.required(field, password):
        check.length(field, password, min_len=MIN_LENGTH, max_len=MAX_LENGTH)
