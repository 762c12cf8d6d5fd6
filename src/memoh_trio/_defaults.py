"""Defaults the library and the CLI's help text share. No imports: ``memoh-trio --version`` and an
argument error must not pay for trio, grpclib or the migrator."""

#: File streams and tar batches in flight at once. Measured on 2 cores (closing note of issue 3).
DEFAULT_CONCURRENCY = 8
#: Bots migrated at once by :func:`memoh_trio.migrate_all`.
DEFAULT_BOT_CONCURRENCY = 4
