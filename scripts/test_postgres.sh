#!/usr/bin/env bash
# The registry tests again, against a PostgreSQL server on loopback (Debian's postgresql).
# Each test gets a fresh database (tests/conftest.py, LORAGEN_TEST_POSTGRES_URL). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,postgres]"   # pytest comes with test
version=$(ls /etc/postgresql | sort -n | tail -1)
pg_ctlcluster "$version" main status >/dev/null 2>&1 || pg_ctlcluster "$version" main start
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -q -v ON_ERROR_STOP=1" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loragen') THEN
    CREATE ROLE loragen LOGIN PASSWORD 'loragen';
  END IF;
END $$;
-- A throw-away local test server: the tests create and force-drop a database each.
ALTER ROLE loragen SUPERUSER;
SQL
export LORAGEN_TEST_POSTGRES_URL="postgresql+psycopg://loragen:loragen@127.0.0.1:5432/postgres"
# Every test of these files, the slow ones too (the default run leaves them out).
python3 -m pytest -q -m "slow or not slow" tests/test_registry_cli.py tests/test_concurrency.py tests/test_refresh.py tests/test_fuzz_adapters.py \
  tests/test_gc_race.py tests/test_gc_grace.py tests/test_doctor.py
