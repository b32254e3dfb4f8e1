"""Dates as the console writes them everywhere else (the dashboard, the CSVs, the API): ISO, 24 h,
UTC. Django's English "Dec. 7, 2026, 5:01 p.m." was twice as wide and pushed the change lists'
columns (created, expires, last used, finalized at) behind a horizontal scroll at 1280 px.
Only the output formats change; Django's own English input formats stay."""

DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
