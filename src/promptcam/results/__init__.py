"""Result files and stores: the MegaDetector JSON / CSV / JSONL / Parquet writers (``formats``), the run
journal (``journal``) and the station's SQLite store (``store``). Torch-free; above ``runtime``, below the
applications (``batch``, ``station``, ``review``)."""
