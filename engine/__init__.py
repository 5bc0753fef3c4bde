"""The persistent engine: sessions, journal, online-EM classification (torch)."""
