#!/bin/sh
# record.sh PATH TEXT: write the install record (InstallRecord) unless there is one: the
# first install's record stays, as an upgrade makes nothing a purge would not remove
[ -e "$1" ] && exit 0
printf '%s' "$2" > "$1.new" && mv "$1.new" "$1"
