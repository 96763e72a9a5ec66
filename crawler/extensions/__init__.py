"""Scrapy extensions: Prometheus metrics, the run summary, the terminal progress bar."""
