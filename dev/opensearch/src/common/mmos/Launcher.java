package mmos;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.ExtensiblePlugin;
import org.opensearch.plugins.Plugin;

import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.ServiceLoader;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Single-node OpenSearch with classpath plugins. Usage: mmos.Launcher HOME [key=value ...]
 *
 * What differs between majors (plugin class names, how plugins are handed to {@link Node}) lives in
 * {@code MajorNode}, compiled from src/v2 or src/v3 beside this file.
 */
public final class Launcher {
    private static final String NEURAL = "org.opensearch.neuralsearch.plugin.NeuralSearch";
    /** On the classpath only in the secured build (pom profile "secure"): TLS, authentication, roles. */
    private static final String SECURITY = "org.opensearch.security.OpenSearchSecurityPlugin";
    private static final String LOG4J = String.join("\n",
        "status = error",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
        "rootLogger.level = info",
        "rootLogger.appenderRef.console.ref = console",
        // quiet known-harmless WARNs: no-JDK deprecation, per-reroute allocator notice, dangling indices, wlm
        "logger.deprecation.name = org.opensearch.deprecation",
        "logger.deprecation.level = error",
        "logger.alloc.name = org.opensearch.cluster.routing.allocation.AllocationService",
        "logger.alloc.level = error",
        "logger.dangling.name = org.opensearch.gateway.DanglingIndicesState",
        "logger.dangling.level = error",
        "logger.wlm.name = org.opensearch.wlm.QueryGroupTask",
        "logger.wlm.level = error", "");

    /** Extensions found through SPI on the classpath (what PluginsService does for plugins from zips). */
    static final ExtensiblePlugin.ExtensionLoader SPI_EXTENSIONS = new ExtensiblePlugin.ExtensionLoader() {
        @Override
        public <T> List<T> loadExtensions(Class<T> type) {
            List<T> found = new ArrayList<>();
            ServiceLoader.load(type).forEach(found::add);
            return found;
        }
    };

    private Launcher() {}

    public static void main(String[] args) {
        PrintStream err = System.err; // LogConfigurator later redirects System.out/err into log4j
        try {
            if (args.length < 1) throw new IllegalArgumentException("usage: mmos.Launcher HOME_DIR [key=value ...]");
            Path home = Paths.get(args[0]).toAbsolutePath();
            Path config = Files.createDirectories(home.resolve("config"));
            Files.createDirectories(home.resolve("data"));
            Files.createDirectories(home.resolve("logs"));
            Path log4j = config.resolve("log4j2.properties");
            if (!Files.exists(log4j)) Files.write(log4j, LOG4J.getBytes(StandardCharsets.UTF_8));

            Settings.Builder settings = Settings.builder()
                .put("path.home", home.toString())
                .put("path.data", home.resolve("data").toString())
                .put("path.logs", home.resolve("logs").toString())
                .put("discovery.type", "single-node")
                .put("network.host", "127.0.0.1")
                .put("cluster.routing.allocation.disk.threshold_enabled", "false")
                .put("http.port", "9200")
                .put("transport.port", "9300")
                .put("cluster.default_number_of_replicas", "0") // one node: keep new indices green
                .put("cluster.name", "mm-opensearch-dev")
                .put("node.name", "mmos-dev");
            for (int i = 1; i < args.length; i++) {
                int eq = args[i].indexOf('=');
                if (eq <= 0) throw new IllegalArgumentException("expected key=value, got: " + args[i]);
                settings.put(args[i].substring(0, eq), args[i].substring(eq + 1));
            }
            Environment env = InternalSettingsPreparer.prepareEnvironment(settings.build(), Collections.emptyMap(), config, () -> "mmos-dev");
            LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(env.settings())); // before configure: %node_name
            LogConfigurator.registerErrorListener();
            LogConfigurator.configure(env);

            List<Class<? extends Plugin>> plugins = new ArrayList<>(MajorNode.PLUGINS);
            try {
                plugins.add(Class.forName(NEURAL).asSubclass(Plugin.class));
            } catch (ClassNotFoundException e) {
                err.println("mmos: " + NEURAL + " not on the classpath, starting without neural-search");
            }
            try {
                plugins.add(Class.forName(SECURITY).asSubclass(Plugin.class));
            } catch (ClassNotFoundException e) {
                // the usual, unsecured dev node
            }
            MajorNode.loadPainlessExtensions();

            Node node = MajorNode.create(env, plugins);
            CountDownLatch stopped = new CountDownLatch(1);
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                try {
                    node.close();
                    node.awaitClose(20, TimeUnit.SECONDS);
                } catch (Exception e) {
                    e.printStackTrace(err);
                } finally {
                    stopped.countDown();
                }
            }, "mmos-shutdown"));
            node.start();
            stopped.await();
        } catch (Throwable t) {
            err.println("mmos: OpenSearch failed to start");
            t.printStackTrace(err);
            System.exit(1);
        }
    }
}
