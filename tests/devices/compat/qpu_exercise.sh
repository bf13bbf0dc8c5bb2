#!/usr/bin/env bash
# The QPU exercise's client script, as its users run it: register devices, submit jobs
# grouped into programs, remove a device. JSON bodies without a Content-Type header.
# The gateway's address comes from ZYPHER_URL (default http://localhost:8080).
URL="${ZYPHER_URL:-http://localhost:8080}"

curl -s -X POST "$URL/devices" -d '{"id": "qpu-a", "address": "addr1", "type": "qpu", "size": 5}'
echo
curl -s -X POST "$URL/device" -d '{"device_id": "qpu-b", "address": "addr2", "device_type": "qpu", "size": 20}'
echo
curl -s -X POST "$URL/devices" -d '{"id": "qpu-c", "address": "addr3", "type": "qpu", "size": 3}'
echo

curl -s -X POST "$URL/jobs" -d '{"id": "1", "priority": 1, "user_id": "u1", "program_id": "p1", "device_type": "qpu"}'
echo
curl -s -X POST "$URL/jobs" -d '{"id": "2", "priority": 3, "user_id": "u1", "program_id": "p1", "device_type": "qpu"}'
echo
curl -s -X POST "$URL/job" -d '{"job_id": "3", "priority": 2, "user_id": "u2", "program_id": "p2", "device_type": "qpu"}'
echo
curl -s -X POST "$URL/job" -d '{"job_id": "4", "priority": 1, "user_id": "u2", "program_id": "p2", "device_type": "qpu"}'
echo

curl -s -X DELETE "$URL/devices/qpu-c"
echo
