"""Sending mail: one small mailer on aiosmtplib, for any service that writes to people.

Configured by `CRM_SMTP_URL` (`smtp://user:password@host:587` — STARTTLS when the server offers it — or
`smtps://…:465` for TLS from the start) and `CRM_MAIL_FROM`. Without a URL (local runs, tests that do not
look at mail) nothing is sent and the log says so; a mail that cannot be sent is logged, never raised: the
action that wanted it (a sign-up) still succeeds.

Texts come per language (`zh-CN`, `en`), picked by the recipient's locale; the body never reaches the log
(it may hold a token).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib

from crm_kit.validation import LOCALES

log = logging.getLogger("crm.mail")

DEFAULT_LOCALE = LOCALES[0]


@dataclass(frozen=True, slots=True)
class MailText:
    """One language's subject and body; `{name}` placeholders are filled by `Mailer.send`."""

    subject: str
    body: str


def pick(texts: Mapping[str, MailText], locale: str) -> MailText:
    """The text in the recipient's language: exact locale, then the same language, then the default."""
    if locale in texts:
        return texts[locale]
    language = locale.split("-")[0].lower()
    for key, text in texts.items():
        if key.split("-")[0].lower() == language:
            return text
    return texts.get(DEFAULT_LOCALE) or next(iter(texts.values()))


class Mailer:
    def __init__(
        self, smtp_url: str = "", *, sender: str = "CRM <no-reply@crm.local>", timeout: float = 10.0
    ):
        self.sender = sender
        self.timeout = timeout
        self._options: dict[str, Any] | None = None
        if smtp_url:
            url = urlsplit(smtp_url)
            if url.scheme not in ("smtp", "smtps") or not url.hostname:
                raise ValueError(
                    "CRM_SMTP_URL must look like smtp://user:password@host:587 or smtps://host:465"
                )
            tls = url.scheme == "smtps"
            self._options = {
                "hostname": url.hostname,
                "port": url.port or (465 if tls else 25),
                "username": unquote(url.username) if url.username else None,
                "password": unquote(url.password) if url.password else None,
                "use_tls": tls,
            }

    @classmethod
    def from_settings(cls, settings: Any) -> Mailer:
        return cls(settings.smtp_url, sender=settings.mail_from)

    @property
    def configured(self) -> bool:
        return self._options is not None

    async def send(self, to: str, texts: Mapping[str, MailText], *, locale: str, **values: str) -> bool:
        """Send one mail in the recipient's language; True when the SMTP server took it."""
        text = pick(texts, locale)
        domain = to.rpartition("@")[2]
        if self._options is None:
            log.info("no mail sent (CRM_SMTP_URL is not set): %r to a recipient at %s", text.subject, domain)
            return False
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = text.subject.format(**values)
        message.set_content(text.body.format(**values))
        try:
            await aiosmtplib.send(message, timeout=self.timeout, **self._options)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            log.warning("mail to a recipient at %s not sent: %s", domain, type(exc).__name__)
            return False
        return True
