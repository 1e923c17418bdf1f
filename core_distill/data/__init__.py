"""What the models read: sources.py (rows from files, `datasets` folders, hub ids), chat_turns.py (what
the student's chat template writes), truncation.py (fitting rows to the length limits), batches.py
(rows into token ids and batches) and vocab.py (whether two tokenizers share their ids).
"""
