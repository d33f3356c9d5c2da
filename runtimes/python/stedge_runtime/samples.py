"""Built-in sample texts for `stedge tune`: short query-like sentences, and passages built from them.

Timings need texts of realistic lengths, not meaning; these are varied English sentences of 4-40
words, so the tuner runs anywhere without data files.
"""

from __future__ import annotations

SHORT = (
    "how do I reset my password",
    "A man is playing a guitar on the street.",
    "best budget laptop for programming",
    "The cat sat quietly on the warm windowsill.",
    "symptoms of vitamin D deficiency",
    "Two children are building a sandcastle at the beach.",
    "What is the capital of Australia?",
    "The committee postponed its decision until next month because several members were absent.",
    "train times from Lyon to Geneva",
    "A woman is slicing tomatoes in a small kitchen.",
    "Does drinking coffee raise blood pressure over the long term?",
    "The new bridge shortens the commute for thousands of people every day.",
    "refund policy for cancelled flights",
    "Scientists found that the protein folds differently at low temperatures, which changes how it binds.",
    "An old dog sleeps under the kitchen table.",
    "how many calories are in an avocado",
    "The orchestra rehearsed the symphony twice before the evening concert.",
    "Is it safe to run a marathon after a cold?",
    "A group of hikers crosses a narrow wooden bridge over a river.",
    "python read csv file with pandas",
    "The bank raised interest rates for the third time this year, citing persistent inflation.",
    "Someone is riding a bicycle down a steep hill.",
    "why is the sky blue during the day and red at sunset",
    "The museum's new wing displays ceramics from the twelfth century.",
    "cheap flights to Tokyo in April",
    "A chef garnishes a plate of pasta with fresh basil.",
    "The software update fixes a bug that drained the battery overnight.",
    "what causes migraines",
    "Heavy rain flooded several streets in the old town on Tuesday.",
    "A boy throws a red ball to his father in the park.",
    "The study followed twelve thousand adults for a decade and found no link between the two.",
    "how to grow tomatoes on a balcony",
    "The train was delayed by forty minutes because of a signal failure near the station.",
    "A violinist performs on a crowded subway platform.",
    "Which vaccines are recommended before travelling to Kenya?",
    "The startup raised two million dollars to build sensors for farms.",
    "kids birthday party ideas at home",
    "Volunteers planted five hundred trees along the river bank last weekend.",
    "A woman reads a newspaper on a park bench.",
    "The judge ruled that the contract was void because one party had been misled about its terms.",
    "side effects of ibuprofen",
    "Snow covered the mountain pass, and the road stayed closed until spring.",
    "A small boat drifts across a calm lake at dawn.",
    "convert miles to kilometers",
    "The library extended its opening hours during the exam period.",
    "Researchers trained the model on public data and released the weights under an open licence.",
    "A toddler laughs while chasing bubbles in the garden.",
    "is the earth's core hotter than the surface of the sun",
)


def passages(texts: tuple[str, ...] | list[str] = SHORT, count: int = 16, words: int = 220) -> list[str]:
    """``count`` passages of about ``words`` words each, joined from ``texts`` in rotating order."""
    out = []
    n = len(texts)
    for i in range(count):
        parts, total, j = [], 0, i
        while total < words:
            t = texts[j % n]
            t = t if t.endswith((".", "?", "!")) else t[:1].upper() + t[1:] + "."
            parts.append(t)
            total += len(t.split())
            j += 7  # a stride co-prime with the sample count varies the passages
        out.append(" ".join(parts))
    return out


def varied(texts: tuple[str, ...] | list[str] = SHORT, count: int = 192, most: int = 240) -> list[str]:
    """``count`` texts of 1 to ``most`` words, their lengths spread over that range (a stride of 37 words), cut
    from ``texts``' words: inputs of many shapes, for an engine whose memory grows with the shapes it sees."""
    words = " ".join(texts).split()
    return [" ".join(words[(i * 7 + k) % len(words)] for k in range(1 + (i * 37) % most)) for i in range(count)]
