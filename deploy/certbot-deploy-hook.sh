#!/bin/sh
# certbot deploy hook: hand a new certificate to tcpmq and reload it (README, "Run it on EC2").
#   sudo install -m 0755 deploy/certbot-deploy-hook.sh /usr/local/sbin/tcpmq-certbot-hook
#   sudo certbot certonly --standalone -d broker.example.com \
#       --deploy-hook /usr/local/sbin/tcpmq-certbot-hook
# certbot keeps its files readable by root alone; the broker reads these copies
# (the key mode 0600, its own). A reload serves the new certificate to new
# connections without dropping the open ones.
set -eu
: "${RENEWED_LINEAGE:?run by certbot, which sets RENEWED_LINEAGE}"
install -d -o root -g tcpmq -m 0750 /etc/tcpmq/tls
install -o tcpmq -g tcpmq -m 0644 "$RENEWED_LINEAGE/fullchain.pem" /etc/tcpmq/tls/fullchain.pem
install -o tcpmq -g tcpmq -m 0600 "$RENEWED_LINEAGE/privkey.pem" /etc/tcpmq/tls/privkey.pem
systemctl reload tcpmq
