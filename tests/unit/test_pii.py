"""PII redaction: a planted set of every kind must vanish, with exact counts; controls stay untouched."""

from __future__ import annotations

from collections import Counter

import pytest

from tuneloop.feedback.items import FeedbackItem
from tuneloop.feedback.pii import KINDS, iban_valid, luhn_valid, redact, redact_item, redact_messages

# (kind, planted value, sentence it is planted in)
PLANTED = [
    # e-mail
    ("EMAIL", "john.doe@example.com", "Please reply to {} as soon as you can."),
    ("EMAIL", "jane+billing@mail.example.co.uk", "My billing address is {}, not the old one."),
    ("EMAIL", "a.b-c_d@sub.domain.example.org", "Contact: {}"),
    ("EMAIL", "USER123@Example.IO", "I signed up with {} yesterday."),
    ("EMAIL", "support-team@company-name.de", "Forward this to {}."),
    ("EMAIL", "x@y.co", "short one: {}!"),
    ("EMAIL", "first.last+tag+more@gmail.com", "({}) is my address"),
    # phones
    ("PHONE", "+44 20 7946 0958", "Call me on {} after 6pm."),
    ("PHONE", "+1-202-555-0143", "My number is {}."),
    ("PHONE", "+49 (0)30 1234567", "Büro: {}"),
    ("PHONE", "(202) 555-0143", "Reach the front desk at {} please."),
    ("PHONE", "202.555.0143", "text {} if it fails again"),
    ("PHONE", "020 7946 0958", "The London office is {}."),
    ("PHONE", "06 12 34 56 78", "Mon portable: {}"),
    ("PHONE", "+33 6 12 34 56 78", "Appelez-moi au {}."),
    ("PHONE", "+1 (415) 555-0199", "Cell {}, call anytime."),
    ("PHONE", "202-555-0178", "Fax: {}"),
    ("PHONE", "+14155550123", "WhatsApp {} works best."),
    ("PHONE", "07700 900123", "My mobile is {} in the UK."),
    # cards (Luhn-valid test numbers)
    ("CARD", "4111 1111 1111 1111", "I paid with {} but got charged twice."),
    ("CARD", "5500-0055-5555-5559", "Card {} was declined."),
    ("CARD", "378282246310005", "Amex {} on file."),
    ("CARD", "6011111111111117", "The Discover card {} expired."),
    ("CARD", "4012 8888 8888 1881", "Refund to {}, exp 12/26."),
    ("CARD", "5105105105105100", "card number: {}"),
    ("CARD", "4222222222222", "old 13-digit visa {} still works?"),
    # IBANs (valid mod-97)
    ("IBAN", "GB82 WEST 1234 5698 7654 32", "Send the refund to {} please."),
    ("IBAN", "DE89370400440532013000", "IBAN: {}"),
    ("IBAN", "FR14 2004 1010 0505 0001 3M02 606", "Mon IBAN est {}."),
    ("IBAN", "NL91ABNA0417164300", "Pay into {} by Friday."),
    ("IBAN", "ES91 2100 0418 4502 0005 1332", "cuenta {}"),
    ("IBAN", "BE68539007547034", "Belgian account {}."),
    ("IBAN", "CH9300762011623852957", "Swiss: {}"),
    # API keys and tokens
    ("API_KEY", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "my key {} stopped working"),
    ("API_KEY", "sk-ant-api03-abcdEFGH1234ijklMNOP5678qrst", "Using {} with the SDK."),
    ("API_KEY", "sk-3Fq9Zk2LmN8pQr5sTu7vWx1yAb4cDe6f", "export OPENAI_KEY {}"),
    ("API_KEY", "ghp_1234567890abcdefghijABCDEFGHIJ123456", "token {} leaked in the logs"),
    ("API_KEY", "gho_16C7e42F292c6912E7710c838347Ae178B4a", "oauth {}"),
    ("API_KEY", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "PAT is {}."),
    ("API_KEY", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack bot {}"),
    ("API_KEY", "xoxp-2222222222-3333333333-AAAAbbbbCCCC", "user token {}."),
    ("API_KEY", "AKIAIOSFODNN7EXAMPLE", "aws id {} in us-east-1"),
    ("API_KEY", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "maps key {}"),
    ("API_KEY", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz12345678", "HF_TOKEN={}"),
    ("API_KEY", "glpat-xYz123AbC456dEf789gH", "gitlab {}"),
    ("API_KEY", "lsv2_pk_0123456789abcdef0123456789abcdef_0a1b2c3d4e", "LANGSMITH_API_KEY={}"),
    ("API_KEY", "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", "service key {}"),
    ("API_KEY", "pk-lf-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "langfuse public {}"),
    ("API_KEY", "sk-lf-9f8e7d6c-5b4a-3c2d-1e0f-a1b2c3d4e5f6", "langfuse secret {}"),
    ("API_KEY", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
                "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "session {} expired"),
    ("API_KEY", "abc123def456ghi789jkl", "Authorization: Bearer {}"),
    ("API_KEY", "Zx9Yw8Vu7Ts6", "api_key={} in config.ini"),
    ("API_KEY", "s3cr3t-v@lue!", "secret = {}"),
    ("API_KEY", "tok_live_8f7e6d", 'the header was token: "{}"'),
    ("API_KEY", "hunter22", "password={}"),
    ("API_KEY", "9a8b7c6d5e4f", "client_secret: {}"),
    # IP addresses
    ("IP", "192.168.1.254", "The router at {} keeps dropping."),
    ("IP", "10.0.0.1", "ssh into {} fails"),
    ("IP", "8.8.8.8", "DNS set to {}."),
    ("IP", "255.255.255.0", "netmask {}"),
    ("IP", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "v6 address {} is blocked"),
    ("IP", "2001:db8::ff00:42:8329", "compressed: {}."),
    ("IP", "fe80::1ff:fe23:4567:890a", "link-local {}"),
    ("IP", "::1", "listening on {} only"),
]

CONTROLS = [
    "Where is my order #48213? It was due last week.",
    "The plan costs $89.99 per month, or €45,00 in Europe.",
    "It happened on 2024-05-01 at 12:30.",
    "The log says 2024-05-01T12:30:00Z and then 14:05:59.",
    "After upgrading to v2.3.1 the export broke.",
    "We run version 1.2.3.4 of the agent.",
    "Python 3.11.4 and node v18.17.0 are installed.",
    "Reference 48213, batch 123456, room 404.",
    "My loyalty number is 4111111111111112 if that helps.",  # 16 digits, not Luhn
    "Tracking 1234 5678 9012 3457 shows delivered.",  # 16 digits, not Luhn
    "The serial 9876543210987654 is printed on the box.",  # 16 digits, not Luhn
    "Old IBAN GB83 WEST 1234 5698 7654 32 was closed.",  # wrong check digits
    "Typo'd iban DE88370400440532013000 bounced.",  # wrong check digits
    "The address 999.1.1.1 is not valid, nor is 256.300.1.1.",
    "Pi is 3.14159 and the total was 1,234,567 units.",
    "We use the sk-learn library and task-management tools.",
    "Bearer authentication is required for this endpoint.",
    "password: reset it from the settings page.",
    "Missing token: please log in again.",
    "Screens are 16:9, the ratio is 3:2.",
    "ISO 8601 and RFC 3339 timestamps.",
    "Add 1/2 cup of sugar and bake 25-30 minutes.",
    "Growth was 50% in Q3 2024, +5 points over Q2.",
    "Ticket ABC-12345 and SKU 12-3456-789.",
    "Dates like 2024/05/01 and 05.01.2024 are fine.",
    "Error code 0x80070005 when installing.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 in the request.",
    "Commit a3f5c9e fixed it; see std::vector docs.",
    "The MAC is 00:1A:2B:3C:4D:5E on the label.",
    "The meeting is at 10:30 am, room 12.",
    "I am super frustrated with the login page!",
    "Can you summarize this article about renewable energy?",
    "Call me maybe, or email me later.",
    "Scores: 98.6, 72.25 and 100.",
    "Chapter 12.4.1 explains it.",
]


def test_the_planted_set_is_big_and_covers_every_kind():
    assert len(PLANTED) >= 40
    assert set(k for k, _, _ in PLANTED) == set(KINDS)
    assert len(CONTROLS) >= 30


def test_planted_cards_and_ibans_are_valid_and_controls_are_not():
    for kind, value, _ in PLANTED:
        if kind == "CARD":
            assert luhn_valid(value), value
        if kind == "IBAN":
            assert iban_valid(value), value
    for bad in ("4111111111111112", "1234 5678 9012 3457", "9876543210987654"):
        assert not luhn_valid(bad)
    for bad in ("GB83 WEST 1234 5698 7654 32", "DE88370400440532013000"):
        assert not iban_valid(bad)


@pytest.mark.parametrize("kind,value,sentence", PLANTED, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(PLANTED)])
def test_each_planted_item_is_redacted_with_its_kind(kind, value, sentence):
    text = sentence.format(value)
    out, counts = redact(text)
    assert value not in out
    assert counts == Counter({kind: 1}), (text, out)
    assert out == sentence.format(f"[{kind}]")


def test_all_planted_in_one_text_counts_match_exactly():
    text = "\n".join(sentence.format(value) for _, value, sentence in PLANTED)
    out, counts = redact(text)
    for _, value, _ in PLANTED:
        assert value not in out
    assert counts == Counter(k for k, _, _ in PLANTED)


@pytest.mark.parametrize("text", CONTROLS)
def test_controls_are_untouched(text):
    out, counts = redact(text)
    assert out == text
    assert not counts


def test_controls_mixed_with_planted_stay_intact():
    pieces = []
    for i, (_, value, sentence) in enumerate(PLANTED):
        pieces.append(sentence.format(value))
        pieces.append(CONTROLS[i % len(CONTROLS)])
    out, counts = redact(" ".join(pieces))
    for control in CONTROLS:
        assert control in out
    assert counts == Counter(k for k, _, _ in PLANTED)


def test_a_span_is_redacted_once():
    # A key inside an assignment counts once; a phone-looking run inside a key is not a phone.
    out, counts = redact("api_key=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z and ghp_2025550143abcdefghijABCDEFGHIJ12345")
    assert out == "api_key=[API_KEY] and [API_KEY]"
    assert counts == Counter({"API_KEY": 2})
    # An IBAN's digits are not also a card number.
    out, counts = redact("DE89 3704 0044 0532 0130 00")
    assert counts == Counter({"IBAN": 1})
    # A JWT after Bearer is one key.
    jwt = [v for k, v, _ in PLANTED if v.startswith("eyJ")][0]
    out, counts = redact(f"Authorization: Bearer {jwt}")
    assert out == "Authorization: Bearer [API_KEY]" and counts == Counter({"API_KEY": 1})


def test_card_followed_by_another_number():
    out, counts = redact("card 4111 1111 1111 1111 2024 expiry")
    assert out == "card [CARD] 2024 expiry" and counts == Counter({"CARD": 1})


def test_redact_messages_copies_and_counts():
    messages = (
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "I'm jane+x@example.com, call +1-202-555-0143."},
        {"role": "user", "content": [{"type": "text", "text": "ip 10.1.2.3"}, "card 4111111111111111"]},
    )
    out, counts = redact_messages(messages)
    assert isinstance(out, tuple)
    assert out[1]["content"] == "I'm [EMAIL], call [PHONE]."
    assert out[2]["content"] == [{"type": "text", "text": "ip [IP]"}, "card [CARD]"]
    assert messages[1]["content"].startswith("I'm jane")  # input unchanged
    assert counts == Counter({"EMAIL": 1, "PHONE": 1, "IP": 1, "CARD": 1})
    as_list, _ = redact_messages(list(messages))
    assert isinstance(as_list, list)


def test_redact_item():
    item = FeedbackItem(
        id="x", source="test", messages=({"role": "user", "content": "mail bob@example.com"},),
        response="Sure, 8.8.8.8", timestamp="2024-05-01T00:00:00+00:00", comment="my key sk-abcdefghijklmnop12345678",
    )
    clean, counts = redact_item(item)
    assert clean.prompt == "mail [EMAIL]" and clean.response == "Sure, [IP]" and clean.comment == "my key [API_KEY]"
    assert counts == Counter({"EMAIL": 1, "IP": 1, "API_KEY": 1})


def test_empty_text():
    assert redact("") == ("", Counter())
