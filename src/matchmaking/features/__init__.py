"""Raw data -> model features. Pure functions shared by batch (training) and online (serving)."""
