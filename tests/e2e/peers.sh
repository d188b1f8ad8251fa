#!/usr/bin/env bash
# Restore waves end to end (issue 16): tests/bench/peers.sh with 4 stations and a
# 64 MiB image, every link 100 Mbit/s in network namespaces: alone, the wave with the
# peer exchange, the wave started one station after another, the faults (a peer
# killed mid-wave, a hostile member serving noise, a station of another wave and a
# caller without a token asking a peer: 403), the wave unicast. Every restored disk is compared with the image; any failure fails.
# Uses the debug daemon and the release restore client CI builds (.ci/run).
E2E=1 exec bash "$(dirname "$0")/../bench/peers.sh" 4 64
