#!/usr/bin/env bash
# Installs the Redis and RabbitMQ servers that the tests start on 127.0.0.1 (Debian
# packages). The tests start their own instances on free ports; the system services are
# not used (and not started by the install).
exec "$(dirname "$0")/apt-install.sh" brokers redis-server rabbitmq-server
