"""Who is calling and what they may use and spend: one authentication middleware, team keys with allow-lists, per-key
quotas (in process or shared in Redis).
"""
