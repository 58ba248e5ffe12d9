"""What operators see: JSON logs (logging.py), counters (metrics.py) and their Prometheus collector
(collector.py), traces (tracing.py) and the dashboard (dashboard.py).
"""
