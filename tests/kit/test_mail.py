"""The kit's mailer: sends through real SMTP, in the recipient's language, and never fails its caller."""

import logging

import pytest
from crm_kit import infra
from crm_kit.mail import Mailer, MailText

TEXTS = {
    "zh-CN": MailText(subject="你好 {name}", body="验证码：{token}\n"),
    "en": MailText(subject="Hello {name}", body="Token: {token}\n"),
}


async def test_a_mail_goes_through_smtp_in_the_recipients_language(smtp_sink):
    mailer = Mailer(smtp_sink.url, sender="CRM <no-reply@example.com>")
    assert await mailer.send("a@example.com", TEXTS, locale="en", name="Ann", token="t1")
    assert await mailer.send("b@example.com", TEXTS, locale="zh", name="王", token="t2")
    assert await mailer.send("c@example.com", TEXTS, locale="fr", name="Zoé", token="t3")
    en = await smtp_sink.mail_to("a@example.com")
    zh = await smtp_sink.mail_to("b@example.com")
    default = await smtp_sink.mail_to("c@example.com")
    assert (en["Subject"], en.get_content().strip()) == ("Hello Ann", "Token: t1")
    assert (zh["Subject"], zh.get_content().strip()) == ("你好 王", "验证码：t2")
    assert default["Subject"] == "你好 Zoé" and default["From"] == "CRM <no-reply@example.com>"


async def test_without_a_server_nothing_is_sent_and_nothing_fails(caplog):
    caplog.set_level(logging.INFO, logger="crm.mail")
    assert not Mailer("").configured
    assert await Mailer("").send("a@example.com", TEXTS, locale="en", name="x", token="secret-token") is False
    assert "no mail sent" in caplog.text and "secret-token" not in caplog.text
    # A server that does not answer: logged, not raised.
    down = Mailer(f"smtp://127.0.0.1:{infra.free_port()}", timeout=2)
    assert await down.send("a@example.com", TEXTS, locale="en", name="x", token="secret-token") is False
    assert "secret-token" not in caplog.text


def test_a_bad_url_is_refused_at_start():
    with pytest.raises(ValueError):
        Mailer("http://mail.example.com")
