#!/usr/bin/env python3
"""Generates pairs.jsonl, the labelled evaluation set of near-duplicate cache matching.

Every line is one pair of final user turns sent in the same conversation:
  {"a": ..., "b": ..., "label": "paraphrase" | "near_miss", "kind": ...}
A paraphrase asks the same thing (its answer may be served for the other); a near miss differs
in what changes the answer (kind: language, number, entity, negation, option, format, code,
quote, direction, lowercase_entity). Paraphrases are either retyped (kind: retyped: case,
spacing, punctuation, a typo) or reworded (kind: reworded: another template of the same
request).

The pairs are generated from templates with a fixed seed: they are varied but synthetic.
Run `python3 examples/cache-eval/generate.py > examples/cache-eval/pairs.jsonl`.
"""
import json
import random

rng = random.Random(17)

EMAILS = [
    "Hi Anna, the invoice for March is attached; please confirm the payment date. Best, Tom",
    "Dear team, the office will be closed on Friday for maintenance. Regards, Facilities",
    "Hello Mark, thanks for the quick delivery. Could you send the tracking number? Lisa",
    "Hi all, the quarterly review moves to Thursday afternoon. Please update your slides.",
    "Dear customer, your subscription renews next week. Reply to this email to cancel.",
    "Hi Sara, the contract draft is ready for your review; comments welcome by Monday.",
]
TICKETS = [
    "my order arrived two weeks late and the box was damaged",
    "the app crashes every time I open the settings page",
    "thanks, the new dashboard is great and very fast",
    "I was charged twice for the same subscription this month",
    "can you tell me when the store opens on Sunday",
    "the password reset link in your email does not work",
]
LANGS = ["French", "German", "Spanish", "Italian", "Japanese", "Portuguese", "Dutch", "Korean"]
COUNTRIES = ["France", "Spain", "Italy", "Germany", "Japan", "Canada", "Brazil", "Kenya"]
CITIES = ["Paris", "Lyon", "Berlin", "Munich", "Madrid", "Rome", "Vienna", "Prague"]
PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie", "Nikola Tesla"]
FORMATS = ["JSON", "YAML", "CSV", "XML", "Markdown"]
CODE = ["x.iter().sum()", "list.sort(reverse=True)", "SELECT count(*) FROM users",
        "git rebase -i HEAD~3", "arr.map(f).filter(g)"]
PHRASES = ["free trial", "money back", "limited offer", "next day delivery", "no fees"]
DOCS = ["Our plan includes a free trial and next day delivery for all members.",
        "Sign up today: limited offer, no fees for the first year.",
        "The money back guarantee covers thirty days after purchase."]

def typo(s):
    """A retyping: case, spacing, punctuation or one dropped letter in a long word."""
    choice = rng.randrange(4)
    if choice == 0:
        return s[0].lower() + s[1:] if s[0].isupper() else s[0].upper() + s[1:]
    if choice == 1:
        return s.replace(" ", "  ", 2)
    if choice == 2:
        return s.rstrip(".?!") + ("!" if s.endswith(".") else " ?") if s[-1] in ".?!" else s + "."
    words = s.split(" ")
    long = [i for i, w in enumerate(words) if len(w) > 6 and w.isalpha() and w.islower()]
    if not long:
        return s + " "
    i = rng.choice(long)
    w = words[i]
    k = rng.randrange(1, len(w) - 1)
    words[i] = w[:k] + w[k + 1:]
    return " ".join(words)

# Families: templates (rewordings of one request) and the slots they take. `vary` names the
# slot a near miss changes and its kind.
FAMILIES = [
    dict(kind="language", vary="lang", slots=dict(lang=LANGS, email=EMAILS), templates=[
        "Translate this email into {lang}: {email}",
        "Please translate the following email to {lang}: {email}",
        "Can you translate this email into {lang}? {email}",
        "Translate into {lang}, keeping the tone: {email}",
    ]),
    dict(kind="number", vary="n", slots=dict(n=["3", "4", "5", "6", "7", "10"], topic=[
        "a team offsite", "a rainy weekend", "a birthday party", "a school project",
        "reducing cloud costs"]), templates=[
        "List {n} ideas for {topic}.",
        "Give me {n} ideas for {topic}.",
        "Suggest {n} ideas for {topic}, please.",
        "I need {n} ideas for {topic}.",
    ]),
    dict(kind="number", vary="n", slots=dict(n=["2", "3", "4", "5"], ticket=TICKETS), templates=[
        "Summarise this customer message in {n} sentences: {ticket}",
        "Summarize the following customer message in {n} sentences: {ticket}",
        "In {n} sentences, summarise this customer message: {ticket}",
    ]),
    dict(kind="entity", vary="country", slots=dict(country=COUNTRIES), templates=[
        "What is the capital of {country}?",
        "What's the capital city of {country}?",
        "Tell me the capital of {country}.",
        "Which city is the capital of {country}?",
    ]),
    dict(kind="entity", vary="person", slots=dict(person=PEOPLE), templates=[
        "Write a short biography of {person}.",
        "Write a brief bio of {person}.",
        "Give me a short biography of {person}.",
    ]),
    dict(kind="entity", vary="b", slots=dict(a=CITIES[:4], b=CITIES[4:]), templates=[
        "How far is {a} from {b} by train?",
        "What is the train distance between {a} and {b}?",
        "How long is the train journey from {a} to {b}?",
    ]),
    dict(kind="option", vary="opt", slots=dict(opt=["YES", "NO"], ticket=TICKETS), templates=[
        "Reply {opt} if this is a complaint: {ticket}",
        "Answer {opt} when the following message is a complaint: {ticket}",
        "Respond with {opt} if this message is a complaint: {ticket}",
    ]),
    dict(kind="format", vary="fmt", slots=dict(fmt=FORMATS, what=[
        "the three largest planets and their diameters", "the days of the week in order",
        "the primary colours", "the planets and their number of moons"]), templates=[
        "Return {what} as {fmt}.",
        "Give me {what} formatted as {fmt}.",
        "Output {what} in {fmt} format.",
    ]),
    dict(kind="code", vary="code", slots=dict(code=CODE), templates=[
        "Explain what `{code}` does.",
        "What does `{code}` do?",
        "Explain the code `{code}` to a beginner.",
    ]),
    dict(kind="quote", vary="phrase", slots=dict(phrase=PHRASES, doc=DOCS), templates=[
        'Does the text contain the phrase "{phrase}"? Text: {doc}',
        'Does the following text mention "{phrase}"? {doc}',
        'Check whether "{phrase}" appears in this text: {doc}',
    ]),
    dict(kind="direction", vary="dir", slots=dict(dir=["ascending", "descending"], nums=[
        "4, 9, 2, 7", "10, 3, 8, 1", "5, 12, 6, 11"]), templates=[
        "Sort these numbers in {dir} order: {nums}",
        "Please sort the following numbers in {dir} order: {nums}",
        "Put these numbers in {dir} order: {nums}",
    ]),
    dict(kind="language", vary="lang", slots=dict(lang=["Python", "Rust", "Go", "Java", "JavaScript"], task=[
        "reverses a string", "reads a file line by line", "checks whether a number is prime",
        "parses a date"]), templates=[
        "Write a {lang} function that {task}.",
        "Write a function in {lang} that {task}.",
        "Show me a {lang} function which {task}.",
    ]),
]

# Negation pairs: (affirmative templates, negated templates) of one request.
NEGATIONS = [
    (["Write a product description for {item} that mentions the price.",
      "Write a description of {item} that mentions its price."],
     ["Write a product description for {item} that does not mention the price.",
      "Write a description of {item} that doesn't mention its price."]),
    (["Is the following review positive? {ticket}",
      "Would you say this review is positive? {ticket}"],
     ["Is the following review not positive? {ticket}",
      "Would you say this review is not positive? {ticket}"]),
    (["Explain recursion using an analogy.", "Explain recursion with an analogy."],
     ["Explain recursion without using an analogy.", "Explain recursion without an analogy."]),
    (["Should I include a cover letter with {item}?",
      "Do I need to include a cover letter with {item}?"],
     ["Should I never include a cover letter with {item}?",
      "Do I not need to include a cover letter with {item}?"]),
]
ITEMS = ["a steel water bottle", "a pair of running shoes", "a desk lamp", "a backpack"]

# Near misses the guard cannot see (a lowercase name swapped): left to the threshold.
LOWERCASE = [
    ("what is the capital of {a}?", ["france", "spain", "italy", "peru", "chile", "egypt"]),
    ("how do i get a visa for {a}?", ["canada", "mexico", "japan", "india", "norway"]),
    ("best time of year to visit {a}", ["lisbon", "porto", "seville", "naples", "krakow"]),
]

def fill(template, values):
    return template.format(**values)

pairs = []
def pair(a, b, label, kind):
    if a != b:
        pairs.append(dict(a=a, b=b, label=label, kind=kind))

for fam in FAMILIES:
    names = list(fam["slots"])
    for _ in range(12):
        values = {k: rng.choice(fam["slots"][k]) for k in names}
        t1, t2 = rng.sample(fam["templates"], 2)
        a = fill(t1, values)
        # Paraphrases: reworded, and retyped.
        pair(a, fill(t2, values), "paraphrase", "reworded")
        pair(a, typo(a), "paraphrase", "retyped")
        # Near misses: the varied slot changed, same template (the hardest case), and once
        # more in another wording.
        other = dict(values)
        other[fam["vary"]] = rng.choice([v for v in fam["slots"][fam["vary"]] if v != values[fam["vary"]]])
        pair(a, fill(t1, other), "near_miss", fam["kind"])
        pair(a, typo(fill(t2, other)), "near_miss", fam["kind"])

for pos, neg in NEGATIONS:
    for _ in range(10):
        values = dict(item=rng.choice(ITEMS), ticket=rng.choice(TICKETS))
        i = rng.randrange(len(pos))
        a = fill(pos[i], values)
        pair(a, fill(pos[1 - i], values), "paraphrase", "reworded")
        pair(a, fill(neg[i], values), "near_miss", "negation")
        pair(fill(neg[i], values), fill(neg[1 - i], values), "paraphrase", "reworded")
        pair(a, typo(fill(neg[1 - i], values)), "near_miss", "negation")

for template, names in LOWERCASE:
    for a, b in zip(names, names[1:] + names[:1]):
        pair(template.format(a=a), template.format(a=b), "near_miss", "lowercase_entity")
        pair(template.format(a=a), typo(template.format(a=a)), "paraphrase", "retyped")

seen = set()
for p in pairs:
    key = (p["a"], p["b"])
    if key in seen:
        continue
    seen.add(key)
    print(json.dumps(p, ensure_ascii=False))
