"""Defaults the library and the CLI's help text share. No imports: ``memoh-trio --version`` and an
argument error must not pay for trio, grpclib or the migrator."""

#: File streams and tar batches in flight at once. Measured on 2 cores (closing note of issue 3).
DEFAULT_CONCURRENCY = 8
#: Bots migrated at once by :func:`memoh_trio.migrate_all`.
DEFAULT_BOT_CONCURRENCY = 4
#: Largest WriteRaw chunk: grpcio and grpc-go refuse messages above 4 MiB unless configured
#: otherwise; a chunk plus its framing must stay below that.
MAX_CHUNK_SIZE = 4 * 1024 * 1024 - 1024
#: Smallest chunk a migration takes (``migrate(chunk_size=)``, ``--chunk-size``): below it the
#: per-message overhead dominates (``--chunk-size 10`` sent a 1 MiB file in 5.7 s, issue 26).
MIN_CHUNK_SIZE = 16 * 1024
