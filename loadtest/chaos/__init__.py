"""A chaos suite in the manner of Jepsen and etcd's robustness tests: record every client operation while a
nemesis breaks things, then judge the whole history against the books read after healing.

    workload ──records──▶ history ──▶ checker ◀── final books (center usage + regional ledgers)
    nemesis  ──records──▶    ▲           │
                              └── JSON lines, so a run can be kept and re-judged
                                          ▼
                                       verdict (violations by kind, with the operations involved)

`history` holds what clients saw (operations with their outcomes) and what the nemesis did; `books` holds
what the system says it did; `checker.judge` is pure and compares the two.
"""
