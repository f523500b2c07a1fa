"""The text corpus the chunking and tokenizer tests share (a helper, not a test module):
hand-written edge cases, generated sentences, random characters and long texts."""

from __future__ import annotations

import random
import string

_HAND_WRITTEN = [
    "Hello world.",
    "hello world",
    "Hi",
    "ok",
    "a b c",
    "one two three four",
    "one two three four five",
    "Yes!",
    "Why?",
    "Wait...",
    "Wait…",
    "Well, then,",
    "Well, then -",
    "Well, then —",
    "Well, then –",
    "He said: ",
    "He said:",
    '"Hi?", she said.',
    "“Hi?”, she said.",
    "‘Hi!’; she said",
    "«Bonjour», dit-il",
    "He left (quietly)",
    "He left (quietly,)",
    "He left [quietly].",
    'She said "hello"',
    "She said 'hello,'",
    'She said "hello."',
    "She said “hello”",
    "It costs 3.5 euros.",
    "It costs 3.5 euros. Then 4.25 more. And 10.0!",
    "Version 1.2.3 is out. Get it now.",
    "I have 3. 5 apples are red.",
    "Pi is 3.14159. E is 2.71828.",
    "Room 101. Floor 3.",
    "Call 555-1234 now. Or 0.5 later.",
    "The year 1999. The year 2000.",
    "Ends with a number 42",
    "Ends with a decimal 4.2",
    "1. First item. 2. Second item. 3. Third item.",
    "It's a dog's life; isn't it? Yes; it is.",
    "first; second; third; fourth; fifth; sixth.",
    "a;b;c",
    "Semicolons; everywhere; here",
    "Line one.\nLine two.\nLine three.",
    "Line one\nLine two\r\nLine three",
    "Lots   of    spaces   here.",
    "Tabs\tand\ttabs.",
    "   leading and trailing   ",
    "Sentence one.    \n\n   \t  Sentence two.",
    "Sentence one.   .   Sentence two.",
    "Hello.  \n  \n  ",
    "What?! Really?! No way!!!",
    "Hmm... okay... fine...",
    "Hmm……okay",
    "Dashes - and – and — everywhere",
    "Quote at end: “done.”",
    "Quote at end: 'done'.",
    "Nested \"quotes 'inside' here\" ok",
    "Brackets (a [b] c) end",
    "Math: 2 + 2 = 4, 3 * 3 = 9.",
    "Email me at someone@example.com. Thanks!",
    "URL https://example.com/path?x=1. Done.",
    "Café au lait, s'il vous plaît.",
    "Über straße Ärger Öl.",
    "ñandú año señor. ¿Qué? ¡Sí!",
    "ßtraße",
    "élève",
    "ǅemal",
    "Emoji 😀 here.",
    "😀",
    "🎉🎉🎉 party!",
    "Mixed 😀. Emoji 🚀! End 🌍",
    "Control\x07char.",
    "\x07",
    "\x01\x02",
    "\x1cx",
    "Zero\u200bwidth space.",
    "Non\u00a0breaking space.",
    "Ideographic\u3000space.",
    "Full-width ＡＢＣ １２３.",
    "中文句子。第二句。",
    "Ελληνικά κείμενο.",
    "Русский текст. Ещё.",
    "Arabic مرحبا.",
    "I ’m here ‘now’.",
    "It’s fine, isn’t it?",
    "Don't stop; believe!",
    "...",
    ".",
    "!",
    "?",
    ",",
    ";",
    "-",
    '"',
    "'",
    "()",
    "a",
    "A",
    "1",
    "3.5",
    "x.",
    "X,",
    "Ends with comma,",
    "Ends with dash -",
    "Ends with em dash—",
    'Ends with closing quote"',
    "Ends with closing quote’",
    "Ends with bracket)",
    "Ends with guillemet»",
    "Ends with question in quotes?”",
    "Trailing comma inside quote,”",
    "Multiple, commas, ,, here,,",
    "Colon: then; semicolon, comma.",
    "!!! ??? ...",
    ". . . .",
    "Mr. Smith went to Washington. Dr. Jones did not.",
    "U.S.A. is big. U.K. is small.",
    "e.g. this and i.e. that.",
    "A" * 300,
    "word " * 120,
    (
        "This is a long sentence without any sentence ending punctuation but with commas, "
        "many commas, and more commas, and even more words, to exceed the token limit, "
        "so that the fallback splitter has to cut it, somewhere, anywhere"
    ),
    (
        "This is a long sentence without any punctuation at all that just keeps going and "
        "going and going well past the limit of tokens per chunk so the splitter cannot cut"
    ),
    "Short. " * 40,
    "Ünïcödé wörds everywhere; ça va? Très bien!",
]

_FRAGMENTS = [
    "hello",
    "world",
    "the",
    "quick",
    "brown",
    "fox",
    "café",
    "naïve",
    "über",
    "straße",
    "3.5",
    "42",
    "0.25",
    "1999",
    "it's",
    "don't",
    "Kyutai",
    "señor",
    "😀",
    "“quoted”",
    "‘single’",
    '"plain"',
    "(paren)",
    "[bracket]",
    "«guill»",
    "x",
    "I",
    "a",
    "ÉLÈVE",
    "año",
]
_SEPARATORS = [
    " ",
    " ",
    " ",
    " ",
    ", ",
    "; ",
    ": ",
    " - ",
    " – ",
    " — ",
    ". ",
    "! ",
    "? ",
    "... ",
    "… ",
    "\n",
    "  ",
    ".\n\n",
    ". \t ",
    "?! ",
    ".” ",
    ".' ",
    ",” ",
    "; ",
    " (",
    ") ",
    ".",
    ",",
]
_ENDINGS = ["", ".", "!", "?", "...", ",", "-", "—", ";", ":", "”", '."', ".)", ",’", " ", "\n"]


def _generated_strings(count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        n = rng.choice([1, 2, 3, 4, 5, 8, 15, 30, 60])
        parts = [rng.choice(_FRAGMENTS)]
        for _ in range(n - 1):
            parts.append(rng.choice(_SEPARATORS))
            parts.append(rng.choice(_FRAGMENTS))
        text = "".join(parts) + rng.choice(_ENDINGS)
        if rng.random() < 0.2:
            text = rng.choice(["  ", "\n", "\t", " \n "]) + text
        if rng.random() < 0.1:
            text = text.lower()
        out.append(text)
    return out


def long_text(rng: random.Random, n_chars: int) -> str:
    """Several thousand characters of mixed sentences, some overlong, some with blank parts."""
    parts = []
    size = 0
    while size < n_chars:
        n = rng.randint(2, 40)
        words = [rng.choice(_FRAGMENTS) for _ in range(n)]
        for i in range(1, n):
            if rng.random() < 0.15:
                words[i] = words[i] + rng.choice([",", ";", ":"])
        sentence = " ".join(words) + rng.choice([".", "!", "?", "...", ".", "."])
        sentence += rng.choice([" ", " ", "  \n  ", "\n\n", " \t ", " "])
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)


def _random_chars(rng: random.Random, count: int) -> list[str]:
    """Arbitrary characters, punctuation and whitespace: the splitter must not crash."""
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "éü’“”…—😀\x07"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(count)]


def _corpus() -> list[str]:
    rng = random.Random(1234)
    return (
        _HAND_WRITTEN
        + _generated_strings(120, rng)
        + _random_chars(rng, 40)
        + [long_text(rng, n) for n in (2000, 3500, 6000)]
    )


def corpus() -> list[str]:
    return _corpus()
