"""Who may hold an account: Join under the coordinator's admission rule, and the check
every Authorize makes (docs/adr/0005, 0015).

Open admission grants the starter credits on first sight (Join, or a user's first
Authorize); invite admission spends a one-time invite in the grant's transaction;
proof-of-work admission asks for a nonce that hashes with the user's key to
`pow_bits` leading zero bits. A user who joined once is never asked again.
Refusals are `troop_common.errors` (the servicer only converts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from troop_common.admission import MAX_INVITE_LENGTH, MAX_NONCE_LENGTH, hash_invite, pow_ok
from troop_common.errors import FailedPrecondition, PermissionDenied
from troop_coordinator.ledger import Ledger
from troop_coordinator.validation import Violations


@dataclass(frozen=True)
class Joined:
    """A Join's answer: what was granted now (0 if the user had joined before)."""

    public_key: str
    granted_millicredits: int
    balance_millicredits: int
    already_joined: bool


class Admission:
    def __init__(self, ledger: Ledger, *, mode: str, pow_bits: int) -> None:
        self.ledger = ledger
        self.mode = mode
        self.pow_bits = pow_bits

    @property
    def required_pow_bits(self) -> int:
        """The proof of work's difficulty, 0 unless this coordinator admits by it."""
        return self.pow_bits if self.mode == "pow" else 0

    async def join(
        self, user: str, now: datetime, *, invite_code: str = "", pow_nonce: str = ""
    ) -> Joined:
        """Grant the starter credits once, if the admission rule is met; a user who has
        joined already is answered with their balance and asked for nothing."""
        granted = False
        if not await self.ledger.has_joined(user):
            invite = self._ticket(user, invite_code, pow_nonce)
            granted = await self.ledger.ensure_user_with_grant(user, now, invite_hash=invite)
        balance, _ = await self.ledger.balance(user)
        starter = self.ledger.starter_millicredits if granted else 0
        return Joined(
            public_key=user,
            granted_millicredits=starter,
            balance_millicredits=balance,
            already_joined=not granted,
        )

    def _ticket(self, user: str, invite_code: str, pow_nonce: str) -> str | None:
        """The invite hash to spend, or None; PermissionDenied if the rule is not met."""
        check = Violations()
        if len(invite_code) > MAX_INVITE_LENGTH:
            check.add("invite_code", f"at most {MAX_INVITE_LENGTH} characters")
        if len(pow_nonce) > MAX_NONCE_LENGTH:
            check.add("pow_nonce", f"at most {MAX_NONCE_LENGTH} characters")
        check.raise_if_any()
        if self.mode == "invite":
            if not invite_code.strip():
                raise PermissionDenied("this coordinator admits by invite: join with invite_code")
            return hash_invite(invite_code)
        if self.mode == "pow" and not pow_ok(user, pow_nonce, self.pow_bits):
            raise PermissionDenied(
                f"this coordinator admits by proof of work: pow_nonce must give "
                f"{self.pow_bits} leading zero bits (see GetAdmission)"
            )
        return None

    async def admit(self, user: str, now: datetime) -> None:
        """Open admission grants on first sight; otherwise the user must have joined."""
        if self.mode == "open":
            await self.ledger.ensure_user_with_grant(user, now)
        elif not await self.ledger.has_joined(user):
            raise self.not_joined()

    async def grant_on_first_use(self, user: str, now: datetime) -> None:
        """A reservation found the user not joined: open admission grants now; any other
        rule refuses (an implicit grant would bypass the invite or the puzzle)."""
        if self.mode != "open":
            raise self.not_joined()
        await self.ledger.ensure_user_with_grant(user, now)

    def not_joined(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"join first: this coordinator admits by {self.mode} (see GetAdmission)"
        )
