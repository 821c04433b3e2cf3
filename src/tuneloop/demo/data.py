"""Synthetic demo data for the "support-intent routing" task.

A customer message goes in; the model must answer exactly one intent label.
Pure standard library: no prefect, no torch.

Public API
----------
INTENTS, SYSTEM_PROMPT
generate_examples(n, seed) -> list of OpenAI chat rows
write_demo_data(out_dir, seed=0) -> {"feedback", "heldout", "corrupted"} -> Path

Held-out guarantee: the candidate pool is deduplicated by exact user text and
partitioned by sha256 of that text (independent of the seed), so a held-out
user message can never appear in the feedback split, for any seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import re
import tempfile
from typing import Iterable

INTENTS: tuple[str, ...] = ("billing", "shipping", "refund", "account", "technical", "cancel")

SYSTEM_PROMPT = (
    "Route the customer message to one intent: billing, shipping, refund, account, "
    "technical, cancel. Answer with the intent only."
)

TENANT = "demo"
RATING = 5

# Fixed derangement used for the corrupted split: rotate each label by one.
# billing->shipping, shipping->refund, ..., cancel->billing. No label maps to itself.
CORRUPTION_MAP: dict[str, str] = {
    intent: INTENTS[(i + 1) % len(INTENTS)] for i, intent in enumerate(INTENTS)
}

FEEDBACK_SIZE = 402  # 67 per intent
HELDOUT_SIZE = 120  # 20 per intent
_HELDOUT_BUCKETS = 4  # sha256(text) % 4 == 0 -> held-out side of the partition

# --------------------------------------------------------------------------
# Slot vocabularies
# --------------------------------------------------------------------------

_SLOTS: dict[str, tuple[str, ...]] = {
    "product": (
        "headphones", "laptop stand", "coffee grinder", "treadmill", "phone case",
        "desk lamp", "backpack", "smart watch", "blender", "yoga mat", "winter jacket",
        "keyboard", "water bottle", "air fryer", "bluetooth speaker", "office chair",
        "monitor", "umbrella", "kettle", "gaming mouse",
    ),
    "plan": (
        "Premium plan", "Pro subscription", "Family plan", "monthly membership",
        "annual plan", "Basic plan", "Business tier", "streaming add-on",
    ),
    "amount": (
        "$9.99", "$14.99", "$19.99", "$24.50", "$29.00", "$39.99", "$49.99", "$59.00",
        "$79.95", "$89.99", "$120.00", "$149.00", "$199.99", "$12.40", "$7.50",
    ),
    "date": (
        "Monday", "Tuesday", "yesterday", "last Friday", "March 3", "April 12",
        "May 28", "June 1", "last week", "the 15th", "two days ago", "July 9",
        "September 21", "October 5",
    ),
    "order": tuple(
        f"#{n}" for n in (
            48213, 51927, 30466, 77102, 62859, 19384, 84571, 25690, 93018, 40752,
            68234, 12907, 57346, 71285, 36019, 89463,
        )
    ),
    "carrier": ("UPS", "FedEx", "USPS", "DHL", "the courier", "the postal service"),
    "device": (
        "iPhone", "Android phone", "iPad", "Windows laptop", "MacBook", "Chromebook",
        "Samsung tablet", "Pixel phone", "desktop browser", "smart TV",
    ),
    "error": (
        "Error 500", "error code 0x80070005", "Network request failed",
        "Something went wrong", "Error 403", "timeout error", "Unexpected token",
        "error E-1042", "Service unavailable", "a white screen",
    ),
    "feature": (
        "search bar", "checkout page", "settings screen", "photo upload", "dashboard",
        "notifications", "dark mode", "export button", "chat window", "sync feature",
    ),
    "card": (
        "Visa", "Mastercard", "Amex card", "debit card", "credit card", "PayPal account",
    ),
    "days": ("3", "5", "7", "10", "12", "two", "four", "ten"),
    "email_kind": ("work email", "personal email", "new email address", "Gmail address"),
}

# --------------------------------------------------------------------------
# Per-intent templates. Each must be objectively decidable from the text.
# billing   = charges, invoices, receipts, payment methods, pricing (no money back)
# shipping  = where is my package, tracking, delivery, address for delivery
# refund    = money back, returns, refund status
# account   = login, password, email/username change, 2FA, profile
# technical = app crashes, errors, bugs, things not loading
# cancel    = cancel a subscription, order or membership
# --------------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged {amount} on {date} and I don't recognize the charge",
        "Why does my invoice show {amount} instead of the usual price?",
        "Can you send me an invoice for my {plan}?",
        "I need a receipt for order {order} for my expense report",
        "How do I update the {card} on file for billing?",
        "My {card} payment was declined for the {plan}",
        "There is a charge of {amount} on my statement from {date}, what is it for?",
        "Can I change my billing date for the {plan}?",
        "Why was my {card} billed twice this month?",
        "How do I switch my payment method from {card} to a different card?",
        "I need a copy of my billing history for {date}",
        "Is sales tax included in the {amount} I was billed?",
        "The price of my {plan} went up to {amount}, why?",
        "Where can I download past invoices for my {plan}?",
        "My payment of {amount} is showing as pending on my {card}",
        "Can I pay for the {plan} with my {card}?",
        "I'd like to add a VAT number to my invoices",
        "Why is there an extra {amount} fee on my bill?",
        "Can I get the invoice for order {order} addressed to my company?",
        "How do I remove an old {card} from my payment methods?",
    ),
    "shipping": (
        "Where is my package? Order {order} still hasn't arrived",
        "My {product} was supposed to arrive {date} but it's not here",
        "Can you give me the tracking number for order {order}?",
        "The {carrier} tracking for order {order} hasn't updated in {days} days",
        "When will my {product} be delivered?",
        "{carrier} says my package was delivered but I never got it",
        "Can I change the delivery address for order {order}?",
        "Do you ship the {product} to Canada?",
        "How long does standard shipping take for a {product}?",
        "My order {order} is stuck in transit with {carrier}",
        "Has my {product} shipped yet?",
        "Can I upgrade order {order} to express delivery?",
        "The delivery estimate for my {product} keeps getting pushed back",
        "Which carrier is delivering order {order}?",
        "My package from order {order} went to the wrong address",
        "It has been {days} days and my {product} still hasn't shipped",
        "Can {carrier} leave my package at the front desk?",
        "Tracking says order {order} is out for delivery since {date}, where is it?",
        "Only part of order {order} arrived, where is the {product}?",
        "Is there a way to pick up my {product} instead of delivery?",
    ),
    "refund": (
        "I want a refund for my {product}",
        "I returned the {product} on {date}, when will I get my money back?",
        "Can I get my money back for order {order}?",
        "How do I return the {product} for a refund?",
        "My refund of {amount} for order {order} hasn't shown up yet",
        "The {product} arrived broken and I want my money back",
        "Please refund the {amount} for the {product}, it doesn't fit",
        "What is your return policy for the {product}?",
        "I sent back order {order} {days} days ago, where is my refund?",
        "Can you refund {amount} to my {card}?",
        "I'd like to return the {product} and get a full refund",
        "Is my refund for order {order} approved yet?",
        "The {product} is not as described, I want to return it",
        "Can I get a return label for the {product}?",
        "I only got a partial refund of {amount} for order {order}",
        "How long do refunds take to reach my {card}?",
        "I want to send back the {product}, how do I start a return?",
        "You promised a refund on {date} but I still have not received {amount}",
        "Can I return the {product} after {days} days?",
        "The {product} stopped working after a week, I want my money back",
    ),
    "account": (
        "I forgot my password and can't log in",
        "How do I reset my password on my {device}?",
        "I want to change the email on my account to my {email_kind}",
        "My account is locked after too many login attempts",
        "I'm not getting the password reset email",
        "How do I change my username?",
        "I can't log in, it says my password is incorrect",
        "How do I turn on two-factor authentication for my account?",
        "I lost my phone and can't get my two-factor login code",
        "Can I merge my two accounts into one?",
        "How do I update my profile name and phone number?",
        "Someone else may have logged into my account on {date}",
        "The verification code for my {email_kind} never arrived",
        "How do I change the display name on my profile?",
        "How do I change the email address I use to sign in?",
        "I can't sign in on my {device}, it says the account does not exist",
        "My login stopped working after I changed my {email_kind}",
        "How do I add a second user to my account?",
        "I need to update the phone number linked to my account",
        "Please help me recover my account, I no longer have access to my old email",
    ),
    "technical": (
        "The app keeps crashing on my {device}",
        "I get '{error}' when I open the {feature}",
        "The {feature} won't load on my {device}",
        "The app freezes every time I tap the {feature}",
        "I keep seeing {error} on the {feature}",
        "Since the last update the app crashes on launch on my {device}",
        "The {feature} is broken, nothing happens when I click it",
        "The website shows {error} on my {device}",
        "Push notifications stopped working on my {device}",
        "The {feature} is really slow and times out with {error}",
        "I found a bug: the {feature} shows the wrong data",
        "The app drains my battery and crashes on my {device}",
        "Pages load blank on my {device}, just {error}",
        "The {feature} stopped syncing between my {device} and the web",
        "I get {error} whenever I try to use the {feature}",
        "The {feature} button does nothing on my {device}",
        "The app won't install on my {device}",
        "Images won't load in the {feature} since {date}",
        "The app shows {error} and closes itself",
        "Video playback is glitchy and crashes on my {device}",
    ),
    "cancel": (
        "Please cancel my {plan}",
        "I want to cancel order {order}",
        "How do I cancel my {plan}?",
        "Cancel my subscription, I don't need it anymore",
        "I'd like to cancel the {product} I ordered {date}",
        "Can I still cancel order {order} before it ships?",
        "Stop my {plan} from renewing, I want to cancel",
        "I want to end my {plan} at the end of this month",
        "Please cancel my membership effective today",
        "How do I turn off auto-renew and cancel my {plan}?",
        "I ordered the {product} by mistake, please cancel order {order}",
        "Cancel my {plan} before the next billing cycle",
        "I no longer want the {product}, cancel the order please",
        "Where is the button to cancel my {plan}?",
        "I want to cancel my free trial of the {plan}",
        "Please cancel both items in order {order}",
        "Can you cancel my {plan} renewal scheduled for {date}?",
        "I changed my mind, cancel my order for the {product}",
        "How can I cancel the {plan} from my {device}?",
        "Cancel order {order} right away please",
    ),
}

_PREFIXES: tuple[str, ...] = (
    "", "", "", "", "", "Hi, ", "Hello, ", "Hey, ", "Hi there, ", "Good morning, ",
    "Quick question: ", "Hello team, ", "Excuse me, ",
)
_SUFFIXES: tuple[str, ...] = (
    "", "", "", "", "", " Thanks.", " Thank you!", " Please help.", " Thanks in advance.",
    " Any help is appreciated.", " Can you help?", " Please advise.",
)

_SLOT_RE = re.compile(r"\{(\w+)\}")

# Leading words that keep their capital letter after a greeting prefix.
_KEEP_CAPITAL = frozenset({"UPS", "FedEx", "USPS", "DHL", "I", "I'd", "I'm"})


def _render(template: str, rng: random.Random) -> str:
    body = _SLOT_RE.sub(lambda m: rng.choice(_SLOTS[m.group(1)]), template)
    prefix = rng.choice(_PREFIXES)
    suffix = rng.choice(_SUFFIXES)
    if prefix and body.split(" ", 1)[0] not in _KEEP_CAPITAL:
        # "Hi, how do I..." but keep "Hi, I was..." / "Hi, UPS says...".
        body = body[:1].lower() + body[1:]
    text = f"{prefix}{body}"
    if suffix and not text.endswith(("?", "!", ".")):
        text += "."
    text += suffix
    # Casual variant: lowercase, no trailing punctuation (about 1 in 5).
    if rng.random() < 0.2:
        text = text.lower().rstrip(".!")
    return text




def _row(user: str, intent: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": intent},
        ],
        "rating": RATING,
        "tenant": TENANT,
    }


def _utterances(intent: str, count: int, rng: random.Random,
                seen: set[str] | None = None, max_tries_factor: int = 50) -> list[str]:
    """Up to ``count`` distinct utterances for ``intent`` not already in ``seen``."""
    seen = set() if seen is None else seen
    out: list[str] = []
    templates = _TEMPLATES[intent]
    tries = 0
    while len(out) < count and tries < count * max_tries_factor:
        tries += 1
        text = _render(rng.choice(templates), rng)
        if text in seen:
            continue
        seen.add(text)
        out.append(text)
    return out


def generate_examples(n: int, seed: int) -> list[dict]:
    """Return ``n`` chat rows, balanced round-robin over INTENTS, shuffled.

    User texts are distinct within the result whenever the template space allows.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    per = [n // len(INTENTS) + (1 if i < n % len(INTENTS) else 0) for i in range(len(INTENTS))]
    seen: set[str] = set()
    rows: list[dict] = []
    for intent, k in zip(INTENTS, per):
        texts = _utterances(intent, k, rng, seen)
        while len(texts) < k:  # template space exhausted: allow repeats
            texts.append(_render(rng.choice(_TEMPLATES[intent]), rng))
        rows.extend(_row(t, intent) for t in texts)
    rng.shuffle(rows)
    return rows


def _text_bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % _HELDOUT_BUCKETS


def _build_splits(seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    rng = random.Random(seed)
    per_feedback = FEEDBACK_SIZE // len(INTENTS)
    per_heldout = HELDOUT_SIZE // len(INTENTS)
    feedback: list[dict] = []
    heldout: list[dict] = []
    pool_seen: set[str] = set()  # global exact-text dedupe across intents
    for intent in INTENTS:
        # Oversample a deduplicated pool, then partition by sha256 of the text.
        pool = _utterances(intent, 6 * (per_feedback + per_heldout), rng, pool_seen)
        train_side = [t for t in pool if _text_bucket(t) != 0]
        held_side = [t for t in pool if _text_bucket(t) == 0]
        if len(train_side) < per_feedback or len(held_side) < per_heldout:
            raise RuntimeError(f"template space too small for intent {intent!r}")
        feedback.extend(_row(t, intent) for t in train_side[:per_feedback])
        heldout.extend(_row(t, intent) for t in held_side[:per_heldout])
    rng.shuffle(feedback)
    rng.shuffle(heldout)
    corrupted = [corrupt_row(r) for r in feedback]
    return feedback, heldout, corrupted


def corrupt_row(row: dict) -> dict:
    """Same prompt, label replaced by CORRUPTION_MAP (never equal to the original)."""
    msgs = row["messages"]
    label = msgs[-1]["content"]
    return _row(msgs[1]["content"], CORRUPTION_MAP[label])


def _atomic_write_jsonl(path: pathlib.Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_demo_data(out_dir: pathlib.Path, seed: int = 0) -> dict[str, pathlib.Path]:
    """Write feedback / heldout / corrupted JSONL files into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    feedback, heldout, corrupted = _build_splits(seed)
    paths = {
        "feedback": out_dir / "feedback.jsonl",
        "heldout": out_dir / "heldout.jsonl",
        "corrupted": out_dir / "corrupted.jsonl",
    }
    _atomic_write_jsonl(paths["feedback"], feedback)
    _atomic_write_jsonl(paths["heldout"], heldout)
    _atomic_write_jsonl(paths["corrupted"], corrupted)
    return paths


def preference_row(row: dict, wrong: str) -> dict:
    """A chat row as an OpenAI DPO row: its answer preferred, `wrong` not."""
    msgs = row["messages"]
    return {"input": {"messages": msgs[:-1]}, "preferred_output": [msgs[-1]],
            "non_preferred_output": [{"role": "assistant", "content": wrong}], "tenant": TENANT}


def _wrong(intent: str, rng: random.Random) -> str:
    return rng.choice([i for i in INTENTS if i != intent])


def write_preference_data(out_dir: pathlib.Path, seed: int = 0) -> dict[str, pathlib.Path]:
    """The routing task as preference data (the same prompts as `write_demo_data`, same held-out partition):

    - pairs.jsonl: OpenAI DPO rows, the right intent preferred over a wrong one drawn at random;
    - thumbs.jsonl: unpaired thumbs for KTO: each prompt served twice (two users asking the same thing), each
      answer on its own: the right intent with "label": true two times in five, a wrong one with "label": false
      otherwise (users flag bad answers more); a prompt's two answers are drawn independently, so they are not
      pairs (both can be good, or both bad);
    - heldout-pairs.jsonl: held-out DPO rows (preference accuracy), beside heldout.jsonl (exact match).
    """
    out_dir = pathlib.Path(out_dir)
    feedback, heldout, _ = _build_splits(seed)
    rng = random.Random(seed + 1)
    pairs = [preference_row(r, _wrong(r["messages"][-1]["content"], rng)) for r in feedback]
    thumbs = []
    for r in feedback:
        for _ in range(2):
            msgs, good = r["messages"], rng.random() < 0.4
            answer = msgs[-1]["content"] if good else _wrong(msgs[-1]["content"], rng)
            thumbs.append({"messages": msgs[:-1] + [{"role": "assistant", "content": answer}], "label": good,
                           "tenant": TENANT})
    held = [preference_row(r, _wrong(r["messages"][-1]["content"], rng)) for r in heldout]
    paths = {"pairs": out_dir / "pairs.jsonl", "thumbs": out_dir / "thumbs.jsonl",
             "heldout_pairs": out_dir / "heldout-pairs.jsonl", "heldout": out_dir / "heldout.jsonl"}
    for key, rows in (("pairs", pairs), ("thumbs", thumbs), ("heldout_pairs", held), ("heldout", heldout)):
        _atomic_write_jsonl(paths[key], rows)
    return paths


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """Small helper: load a JSONL file written by write_demo_data."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
