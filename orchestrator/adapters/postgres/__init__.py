"""PostgreSQL: the store (asyncpg on the hot path), its tables, and the read model's queries."""
