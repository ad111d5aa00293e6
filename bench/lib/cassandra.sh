# Sourced by bench/compare.sh: a 3-node Apache Cassandra cluster on 127.0.0.1-3 from the
# jars Maven Central has (cassandra-all and its runtime dependencies), run with the
# machine's java (17). Needs: CACHE (download cache), and sets CASS_PIDS.
#
#   cassandra_fetch             # jars into $CACHE/cassandra-lib (mvn, once)
#   cassandra_start DIR PORT    # CQL on 127.0.0.{1,2,3}:PORT, storage on PORT+1
#   cassandra_stop

CASSANDRA_VERSION="${CASSANDRA_VERSION:-[5.0,5.1)}"
CASS_PIDS=()

cassandra_fetch() {
  local lib="$CACHE/cassandra-lib"
  if ls "$lib"/cassandra-all-*.jar >/dev/null 2>&1; then return 0; fi
  command -v mvn >/dev/null || { echo "needs mvn (apt-get install maven)" >&2; return 1; }
  mkdir -p "$CACHE/cassandra-fetch"
  cat >"$CACHE/cassandra-fetch/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.dynamo</groupId><artifactId>cassandra-fetch</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId><version>$CASSANDRA_VERSION</version></dependency>
  </dependencies>
</project>
POM
  (cd "$CACHE/cassandra-fetch" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$lib")
}

# Java 17 options from Cassandra's conf/jvm17-server.options (module access it needs).
CASS_JVM_OPTS=(
  -Djdk.attach.allowAttachSelf=true
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
  --add-exports java.base/sun.nio.ch=ALL-UNNAMED
  --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
  --add-exports java.sql/java.sql=ALL-UNNAMED
  --add-exports java.base/java.lang.ref=ALL-UNNAMED
  --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
  --add-opens java.base/java.lang.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
  --add-opens java.base/jdk.internal.math=ALL-UNNAMED
  --add-opens java.base/jdk.internal.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
  --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/java.math=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.net=ALL-UNNAMED
)

# cassandra_node DIR I PORT: config and start node I (1..3) on 127.0.0.I.
cassandra_node() {
  local dir="$1/n$2" i="$2" port="$3"
  local tokens=(-9223372036854775808 -3074457345618258603 3074457345618258602)
  mkdir -p "$dir"
  cat >"$dir/cassandra.yaml" <<YAML
cluster_name: bench
num_tokens: 1
initial_token: ${tokens[$((i - 1))]}
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$((port + 1))"
listen_address: 127.0.0.$i
rpc_address: 127.0.0.$i
storage_port: $((port + 1))
native_transport_port: $port
start_native_transport: true
endpoint_snitch: SimpleSnitch
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
YAML
  cat >"$dir/logback.xml" <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
XML
  local jamm
  jamm="$(ls "$CACHE"/cassandra-lib/jamm-*.jar | head -1)"
  java -Xms1G -Xmx1G -Xss256k -XX:+UseG1GC "${CASS_JVM_OPTS[@]}" \
    -javaagent:"$jamm" \
    -Dcassandra.config="file://$dir/cassandra.yaml" \
    -Dlogback.configurationFile="$dir/logback.xml" \
    -Dcassandra.storagedir="$dir" -Dcassandra-foreground=yes \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 \
    -Dcassandra.jmx.local.port=$((port + 10 + i)) \
    -cp "$CACHE/cassandra-lib/*" org.apache.cassandra.service.CassandraDaemon \
    >"$dir/out.log" 2>&1 &
  CASS_PIDS+=("$!")
}

# cassandra_wait_port IP PORT SECONDS
cassandra_wait_port() {
  local t
  for t in $(seq 1 "$(($3 * 2))"); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    for p in "${CASS_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
    sleep 0.5
  done
  return 1
}

cassandra_start() {
  local dir="$1" port="$2"
  CASS_PIDS=()
  cassandra_node "$dir" 1 "$port"
  cassandra_wait_port 127.0.0.1 "$port" 240 || { tail -n 30 "$dir/n1/out.log" "$dir/n1/system.log" >&2; return 1; }
  cassandra_node "$dir" 2 "$port"
  cassandra_wait_port 127.0.0.2 "$port" 240 || { tail -n 30 "$dir/n2/out.log" "$dir/n2/system.log" >&2; return 1; }
  cassandra_node "$dir" 3 "$port"
  cassandra_wait_port 127.0.0.3 "$port" 240 || { tail -n 30 "$dir/n3/out.log" "$dir/n3/system.log" >&2; return 1; }
}

cassandra_stop() {
  local p
  for p in "${CASS_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CASS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  CASS_PIDS=()
}
