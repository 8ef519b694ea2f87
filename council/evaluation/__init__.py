"""Beside the path — evaluation: is the council worth it, on the user's own data? (`council eval`)

`dataset` (JSONL items: `question` or `messages`, `answer`, GSM8K's `#### N`, `choices`), `record` (every item
asked through the real engine with every member answering), `score` (accuracy per member and per strategy,
oracle, early stop and cascade spending, leave-one-out, all re-scored offline from the recorded answers with
the same vote code), `report` (the table, and the JSON document whose schema is its pydantic model).
"""
