"""Create neutron-server's database schema on sqlite, then stamp it at the alembic heads.

neutron-db-manage upgrade heads fails on sqlite (ALTER constraint), so the schema comes from the
models, as neutron's own functional tests do, and the migration history is then stamped so that
neutron-server accepts the database. Both steps run in one interpreter to pay the imports once.
The file is switched to WAL mode (persistent), so that readers do not block neutron's writers.

usage: /usr/bin/python3 neutron_schema.py NEUTRON_CONF SQLITE_PATH
"""
import sys

import sqlalchemy as sa
from neutron.db.migration import cli
from neutron.db.migration.models import head


def main():
    conf, path = sys.argv[1:3]
    engine = sa.create_engine("sqlite:///" + path)
    head.get_metadata().create_all(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    engine.dispose()
    sys.argv = ["neutron-db-manage", "--config-file", conf, "stamp", "heads"]
    return 1 if cli.main() else 0


if __name__ == "__main__":
    sys.exit(main())
