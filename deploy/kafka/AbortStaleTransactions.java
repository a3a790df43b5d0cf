// Finds transactions left open on partitions of the given topics longer than a minimum age
// and aborts them (KIP-664's DescribeProducers and WriteTxnMarkers, the Admin API behind
// kafka-transactions.sh find-hanging / abort). An open transaction holds back every
// read_committed consumer of its partition (the last stable offset) until it ends; one that
// its coordinator no longer knows of never ends by itself.
//
// Run as a single-file program with the broker's jars on the class path (voltguard kafka
// abort-stale-transactions does):
//   java -cp '<jars>/*' AbortStaleTransactions.java BOOTSTRAP MIN_AGE_MS [--dry-run]
//        [--config CLIENT_PROPERTIES] TOPIC...
// (--config: Java client properties for a secured cluster, as kafka-transactions.sh takes.)
// Prints one line per transaction found: "aborted|open TOPIC PARTITION PRODUCER_ID EPOCH
// START_OFFSET AGE_MS". Exit 0, or 1 with the error on stderr.

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.AbortTransactionSpec;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeProducersResult.PartitionProducerState;
import org.apache.kafka.clients.admin.ProducerState;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;

public class AbortStaleTransactions {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: BOOTSTRAP MIN_AGE_MS [--dry-run] TOPIC...");
            System.exit(2);
        }
        String bootstrap = args[0];
        long minAgeMs = Long.parseLong(args[1]);
        boolean dryRun = false;
        List<String> topics = new ArrayList<>();
        Properties props = new Properties();
        for (int i = 2; i < args.length; i++) {
            if (args[i].equals("--dry-run")) {
                dryRun = true;
            } else if (args[i].equals("--config") && i + 1 < args.length) {
                try (java.io.FileInputStream in = new java.io.FileInputStream(args[++i])) {
                    props.load(in);
                }
            } else {
                topics.add(args[i]);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            List<TopicPartition> partitions = new ArrayList<>();
            Map<String, TopicDescription> described =
                admin.describeTopics(topics).allTopicNames().get();
            for (TopicDescription d : described.values()) {
                for (TopicPartitionInfo p : d.partitions()) {
                    partitions.add(new TopicPartition(d.name(), p.partition()));
                }
            }
            Map<TopicPartition, PartitionProducerState> states =
                admin.describeProducers(partitions).all().get();
            long now = System.currentTimeMillis();
            for (Map.Entry<TopicPartition, PartitionProducerState> e : states.entrySet()) {
                TopicPartition tp = e.getKey();
                for (ProducerState s : e.getValue().activeProducers()) {
                    if (s.currentTransactionStartOffset().isEmpty()) {
                        continue;
                    }
                    long age = now - s.lastTimestamp();
                    if (age < minAgeMs) {
                        continue;
                    }
                    String what = dryRun ? "open" : "aborted";
                    if (!dryRun) {
                        AbortTransactionSpec spec = new AbortTransactionSpec(
                            tp, s.producerId(), (short) s.producerEpoch(),
                            s.coordinatorEpoch().orElse(-1));
                        admin.abortTransaction(spec).all().get();
                    }
                    System.out.println(String.join(" ", what, tp.topic(),
                        String.valueOf(tp.partition()), String.valueOf(s.producerId()),
                        String.valueOf(s.producerEpoch()),
                        String.valueOf(s.currentTransactionStartOffset().getAsLong()),
                        String.valueOf(age)));
                }
            }
        }
    }
}
