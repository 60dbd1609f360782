"""Generate example_dags/data/sample_calls.jsonl: 50 synthetic calls (no real personal data).

Deterministic (seeded): re-running it rewrites the same file.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "example_dags" / "data" / "sample_calls.jsonl"
DAY = datetime(2026, 11, 1, tzinfo=UTC)

AGENTS = {
    11: ("dental-booking", "en"),
    12: ("bank-support", "es"),
    13: ("pizza-orders", "fr"),
    14: ("insurance-claims", "de"),
}
SCRIPTS = {
    "en": [
        ("Testing Agent", "Hi, I'd like to book a cleaning for next week."),
        ("Main Agent", "Of course. Which day suits you best?"),
        ("Testing Agent", "Tuesday afternoon if possible."),
        ("Main Agent", "I have 3:30 PM on Tuesday. Shall I reserve it?"),
        ("Testing Agent", "Yes please."),
        ("Main Agent", "Done. You'll get a confirmation text shortly."),
        ("Testing Agent", "Can I also ask about whitening prices?"),
        ("Main Agent", "Whitening starts at 250 dollars; I can send the price list."),
    ],
    "es": [
        ("Testing Agent", "Hola, no puedo acceder a mi banca en línea."),
        ("Main Agent", "Lo siento. ¿Ha intentado restablecer la contraseña?"),
        ("Testing Agent", "Sí, pero no me llega el código."),
        ("Main Agent", "Voy a verificar su número registrado. Un momento, por favor."),
        ("Testing Agent", "Gracias."),
        ("Main Agent", "Le he enviado un nuevo código por SMS."),
        ("Testing Agent", "Ya lo tengo, funciona."),
        ("Main Agent", "Perfecto. ¿Algo más en lo que pueda ayudarle?"),
    ],
    "fr": [
        ("Testing Agent", "Bonjour, je voudrais commander deux pizzas."),
        ("Main Agent", "Bien sûr ! Lesquelles souhaitez-vous ?"),
        ("Testing Agent", "Une margherita et une quatre fromages."),
        ("Main Agent", "Livraison ou à emporter ?"),
        ("Testing Agent", "Livraison, s'il vous plaît."),
        ("Main Agent", "Comptez 35 minutes. Le total est de 24 euros."),
        ("Testing Agent", "Très bien, merci."),
        ("Main Agent", "Merci à vous, bonne soirée !"),
    ],
    "de": [
        ("Testing Agent", "Guten Tag, ich möchte einen Wasserschaden melden."),
        ("Main Agent", "Das tut mir leid. Wann ist der Schaden entstanden?"),
        ("Testing Agent", "Gestern Abend, in der Küche."),
        ("Main Agent", "Haben Sie Fotos vom Schaden gemacht?"),
        ("Testing Agent", "Ja, mehrere."),
        ("Main Agent", "Ich schicke Ihnen einen Link zum Hochladen."),
        ("Testing Agent", "Wie lange dauert die Bearbeitung?"),
        ("Main Agent", "In der Regel fünf bis sieben Werktage."),
    ],
}
ENDINGS = ["customer-ended-call", "agent-ended-call", "completed", "silence-timed-out", "transferred"]


def build_call(rng: random.Random, n: int) -> dict:
    agent = rng.choice(sorted(AGENTS))
    slug, language = AGENTS[agent]
    turns = SCRIPTS[language][: rng.randint(2, len(SCRIPTS[language]))]
    clock = 0.0
    transcript = []
    for role, content in turns:
        start = round(clock + rng.uniform(0.2, 1.2), 2)
        end = round(start + len(content) / rng.uniform(12, 18), 2)
        transcript.append({"role": role, "content": content, "start_time": start, "end_time": end})
        clock = end
    when = DAY + timedelta(seconds=rng.randint(0, 86_399))
    call = {
        "call_id": f"demo-{when:%Y%m%d}-{n:03d}",
        "agent": agent,
        "transcript_type": "cekura",
        "transcript_json": transcript,
        "voice_recording_url": f"https://recordings.example.com/{slug}/{n:03d}.wav",
        "call_ended_reason": rng.choice(ENDINGS),
        "customer_number": f"+1555010{n:04d}",
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "metadata": {"language": language, "campaign": slug, "synthetic": True},
    }
    if n % 7 == 0:
        call["dynamic_variables"] = {"customer_tier": rng.choice(["gold", "silver"])}
    return call


def main() -> None:
    rng = random.Random(7)
    calls = [build_call(rng, n) for n in range(1, 51)]
    calls.sort(key=lambda c: c["timestamp"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as handle:
        for call in calls:
            handle.write(json.dumps(call, ensure_ascii=False) + "\n")
    print(f"wrote {len(calls)} calls to {OUT}")


if __name__ == "__main__":
    main()
