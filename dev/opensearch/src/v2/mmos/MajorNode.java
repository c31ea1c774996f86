package mmos;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.knn.plugin.KNNPlugin;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

import java.util.Collection;
import java.util.List;

/** OpenSearch 2.x: modules are {@code *Plugin} classes, and {@link Node} takes plugin classes. */
final class MajorNode extends Node {
    static final List<Class<? extends Plugin>> PLUGINS = List.of(Netty4Plugin.class, CommonAnalysisPlugin.class,
        MapperExtrasPlugin.class, ReindexPlugin.class, PainlessPlugin.class, KNNPlugin.class);

    private MajorNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
        super(env, plugins, true);
    }

    static Node create(Environment env, Collection<Class<? extends Plugin>> plugins) {
        return new MajorNode(env, plugins);
    }

    /**
     * PluginsService never calls ExtensiblePlugin.loadExtensions for classpath plugins. Painless keeps its
     * allow-lists in a static map, so feed it the PainlessExtensions (k-NN, analysis-common) found via SPI.
     */
    static void loadPainlessExtensions() {
        new PainlessPlugin().loadExtensions(Launcher.SPI_EXTENSIONS);
    }
}
